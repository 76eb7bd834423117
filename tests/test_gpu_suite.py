"""benchmarks/gpu_suite.sh before it meets a GPU: SMOKE=1 end to end on the CPU without TensorFlow (as
the GPU machines have none), the time budget, and the README's GPU rows written from its summary."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks import gpu_suite
from scripts import fill_gpu_rows
from tests.conftest import data_dir, REPO

NO_TENSORFLOW = os.path.join(REPO, "tests", "no_tensorflow")


@pytest.mark.slow
def test_smoke_mode_runs_every_item_on_the_cpu_and_fills_the_readme_rows(tmp_path):
  pytest.importorskip("torch")  # The bench extra: the suite compares with PyTorch.
  out = tmp_path / "out"
  env = {**os.environ, "SMOKE": "1", "OUT": str(out), "FMNIST_DATA": data_dir(), "PYTHON": sys.executable,
         "PYTHONPATH": os.pathsep.join([REPO, NO_TENSORFLOW]), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([os.path.join(REPO, "benchmarks", "gpu_suite.sh")], env=env, capture_output=True, text=True,
                        timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  names = [item.name for item in gpu_suite.ITEMS]
  assert summary["smoke"] and summary["ran"] == names and not summary["skipped"] and not summary["failed"]
  assert summary["device"]["device_kind"] == "cpu" and summary["device"]["backend"] == "cpu"
  for name in names:
    assert summary["items"][name]["status"] == "ok" and summary["items"][name]["figures"], name
  assert summary["items"]["speed_fp32"]["figures"]["speedup_vs_torch"] > 0
  assert summary["items"]["best"]["figures"]["device_kind"] == "cpu"
  readme = tmp_path / "README.md"
  shutil.copyfile(os.path.join(REPO, "README.md"), readme)
  assert fill_gpu_rows.main([str(out / "summary.json"), f"--readme={readme}"]) == 2  # Not a GPU run.
  assert fill_gpu_rows.main([str(out / "summary.json"), f"--readme={readme}", "--allow_smoke"]) == 0
  gpu_rows = [line for line in readme.read_text().splitlines() if line.startswith(fill_gpu_rows.MARK)]
  accuracy = summary["items"]["best"]["figures"]["accuracy_mean"]
  assert len(gpu_rows) == 3 and f"{accuracy:.4f}" in gpu_rows[0] and "unmeasured" not in "".join(gpu_rows)


def test_items_that_no_longer_fit_the_budget_are_skipped_and_listed(tmp_path, monkeypatch):
  def too_slow(suite):
    raise subprocess.TimeoutExpired("python", suite.left_s())

  monkeypatch.setattr(gpu_suite, "device_name", lambda python: {"backend": "gpu", "device_kind": "NVIDIA H100"})
  monkeypatch.setattr(gpu_suite, "ITEMS", (
      gpu_suite.Item("first", "a figure", 10, lambda suite: {"ms": 1.0}),
      gpu_suite.Item("overrun", "a slower figure than planned", 10, too_slow),
      gpu_suite.Item("large", "does not fit", 1000, lambda suite: {"ms": 2.0}),
  ))
  summary = gpu_suite.run_suite(str(tmp_path), data_dir(), smoke=False, budget_s=60)
  assert (summary["ran"], summary["failed"], summary["skipped"]) == (["first"], ["overrun"], ["large"])
  assert summary["items"]["overrun"]["status"] == "timed_out"
  assert json.loads((tmp_path / "summary.json").read_text())["items"]["first"]["figures"] == {"ms": 1.0}
  assert summary["device"]["device_kind"] == "NVIDIA H100"


def test_the_full_suite_fits_the_device_command_limit():
  assert gpu_suite.FULL_BUDGET_S <= 8 * 60
  assert [item.name for item in gpu_suite.ITEMS][:2] == ["speed_fp32", "best"]  # Most valued first.


def test_the_readme_gpu_rows_are_the_scripts_own_unmeasured_rows():
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  assert fill_gpu_rows.fill(text, fill_gpu_rows.rows(None, None)) == text
  assert "unmeasured" in "".join(line for line in text.splitlines() if line.startswith(fill_gpu_rows.MARK))
