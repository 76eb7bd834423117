"""The documentation holds together: every relative link (file and #anchor) resolves, the README stays
a guide of at most 200 lines and keeps the commands CI and new users run."""

import glob
import os
import re

import pytest

from tests.conftest import REPO

README_MAX_LINES = 200
# Pages another open change writes; until it lands, a link to one of them may dangle. Remove each name
# once its page is in the tree (it is then checked like any other).
PENDING = ()
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def pages():
  return [os.path.join(REPO, "README.md"), os.path.join(REPO, "CONTRIBUTING.md"),
          *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]


def _prose(text: str) -> str:
  """`text` without fenced code blocks and inline code, where brackets are not links."""
  text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
  return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: str) -> set:
  """GitHub's anchors of a Markdown file's headings."""
  with open(path) as f:
    headings = re.findall(r"^#+\s+(.*?)\s*$", _prose_keep_headings(f.read()), flags=re.M)
  return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _prose_keep_headings(text: str) -> str:
  """`text` without fenced code blocks (a `#` comment there is no heading); inline code kept."""
  return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def links(path: str):
  with open(path) as f:
    return [m.group(1) for m in _LINK.finditer(_prose(f.read()))]


@pytest.mark.parametrize("page", pages(), ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_resolves(page):
  broken = []
  for link in links(page):
    if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
      continue
    target, _, anchor = link.partition("#")
    path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
    if not os.path.exists(path):
      if os.path.relpath(path, REPO) not in PENDING:
        broken.append(f"{link} (no {os.path.relpath(path, REPO)})")
      continue
    if anchor and path.endswith(".md") and anchor not in anchors(path):
      broken.append(f"{link} (no heading #{anchor} in {os.path.relpath(path, REPO)})")
  assert not broken, f"{os.path.relpath(page, REPO)}: " + "; ".join(broken)


def test_readme_is_a_guide_of_at_most_200_lines_with_the_first_commands():
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  assert len(text.splitlines()) <= README_MAX_LINES
  first_command = ("scripts/bootstrap.sh && .venv/bin/python -m fmnist_jax.main --config=experiments/base.py "
                   "--workdir=runs/base")
  assert first_command in text.split("## ")[0], "the first command belongs above the first section"
  with open(os.path.join(REPO, ".ci", "run")) as f:
    ci_command = f.read().strip().splitlines()[-1]
  assert ci_command in text, f"the README must show the command CI runs: {ci_command}"


def test_the_resume_table_names_exactly_run_folder_resume_safe():
  """docs/reliability.md prints the list the code derives (config_checks.HYPERPARAM_FIELDS and the rest)."""
  from fmnist_jax import run_folder  # pylint: disable=g-import-not-at-top
  text = open(os.path.join(REPO, "docs", "reliability.md")).read()
  table = text.split("| may change on resume | why |", 1)[1].split("\n\n", 1)[0]
  named = set()
  for row in table.strip().splitlines()[1:]:
    named.update(re.findall(r"`([\w.*]+)`", row.split("|")[1]))
  assert named == {f[:-1] + ".*" if f.endswith(".") else f for f in run_folder.RESUME_SAFE}
