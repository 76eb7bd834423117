"""The code passes the linter configured in pyproject.toml (ruff, from the dev extra)."""

import subprocess
import sys

from tests.conftest import REPO


def test_ruff_finds_nothing():
  result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", REPO], capture_output=True,
                          text=True, cwd=REPO)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
