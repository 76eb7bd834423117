"""A non-editable install works from any folder: train, evaluate, predict, plot and the console scripts."""

import os
import shutil
import site
import subprocess
import sys

import pytest

from tests.conftest import data_dir, REPO

CONSOLE_SCRIPTS = ("fmnist-train", "fmnist-sweep", "fmnist-evaluate", "fmnist-predict", "fmnist-plot")
# Left out of the copy that is installed: what a clean clone lacks.
_NOT_IN_A_CLONE = (".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(python of a fresh venv with the package built from a copy of the checkout, folder outside the repo)."""
  root = tmp_path_factory.mktemp("install")
  clone = root / "clone"
  shutil.copytree(REPO, clone, symlinks=True, ignore=shutil.ignore_patterns(*_NOT_IN_A_CLONE))
  venv = root / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  # The dependencies come from this interpreter's site-packages (no network): a venv's own
  # --system-site-packages reaches only the base Python's, so they are added explicitly.
  venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(venv_site, "outer_site.pth"), "w") as f:
    f.write("".join(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages()))
  proc = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                         str(clone)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  shutil.rmtree(clone)  # Nothing may be read from the source tree after the install.
  elsewhere = root / "elsewhere"
  elsewhere.mkdir()
  return python, str(elsewhere)


def _run(python, cwd, *args, timeout=600):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
  return proc


@pytest.mark.slow
def test_installed_package_trains_evaluates_predicts_and_plots_from_another_folder(installed):
  python, cwd = installed
  where = _run(python, cwd, "-c", "import fmnist_jax; print(fmnist_jax.__file__)").stdout.strip()
  assert where.startswith(os.path.dirname(os.path.dirname(python))), f"not the installed copy: {where}"

  workdir = os.path.join(cwd, "run")
  _run(python, cwd, "-m", "fmnist_jax.main", f"--config={REPO}/experiments/base.py", f"--workdir={workdir}",
       "--config.num_train_steps=40", "--config.log_every_steps=20", "--config.data.source=idx",
       f"--config.data.idx_dirs=('{data_dir()}',)",
       "--config.model.conv_features=(8,16)", "--config.model.dense_features=32")  # Small model: seconds.
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "40"))

  _run(python, cwd, "-m", "fmnist_jax.evaluate", f"--workdir={workdir}", f"--out={cwd}/evaluation")
  assert os.path.isfile(os.path.join(cwd, "evaluation", "per_class.csv"))

  predicted = _run(python, cwd, "-m", "fmnist_jax.predict", f"{REPO}/test_imgs/2.png")  # The shipped model.
  assert predicted.stdout.strip() == "Predicted class: Pullover"

  _run(python, cwd, "-m", "fmnist_jax.plot", f"--workdir={workdir}", f"--out={cwd}/plots")
  assert os.path.isfile(os.path.join(cwd, "plots", "final.csv"))

  bin_dir = os.path.dirname(python)
  assert all(os.access(os.path.join(bin_dir, name), os.X_OK) for name in CONSOLE_SCRIPTS)
  for name, flag in (("fmnist-predict", "--top_k"), ("fmnist-evaluate", "--num_mistakes"), ("fmnist-sweep", "--sweep")):
    assert flag in _run(os.path.join(bin_dir, name), cwd, "--help").stdout  # Help names the command's flags.
  predicted = _run(os.path.join(bin_dir, "fmnist-predict"), cwd, f"{REPO}/test_imgs/9.png")
  assert predicted.stdout.strip() == "Predicted class: Ankle boot"
