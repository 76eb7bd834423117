"""Shared fixtures: real Fashion-MNIST (offline), tiny configs, and a subprocess runner."""

import contextlib
import gzip
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist.
MANUAL_DIR_ENV = "FMNIST_MANUAL_DIR"  # A folder with the four original .gz files, used instead of Debian's.
# Debian's package rewrote the gzip headers of the original release (same deflate stream). The
# originals carried FNAME and these mtimes; restoring them gives the byte-exact archives TFDS checks.
_ORIGINAL_MTIMES = {"train": 0x59A7E9DE, "t10k": 0x59A7E9F3}


def _restore_original_archive(src: str, dst: str) -> None:
  with open(src, "rb") as f:
    data = f.read()
  assert data[:3] == b"\x1f\x8b\x08" and data[3] == 0, f"{src}: unexpected gzip header"
  name = os.path.basename(src)[: -len(".gz")]
  mtime = _ORIGINAL_MTIMES[name.split("-")[0]]
  header = b"\x1f\x8b\x08\x08" + mtime.to_bytes(4, "little") + b"\x00\x03" + name.encode() + b"\x00"
  with open(dst, "wb") as f:
    f.write(header + data[10:])
  with gzip.open(dst) as f:  # Still a valid archive.
    f.read(16)


def data_dir() -> str:
  """The folder of the four IDX archives the tests read: $FMNIST_MANUAL_DIR, else Debian's; fails if neither."""
  folder = os.environ.get(MANUAL_DIR_ENV) or DEBIAN_DIR
  stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
  missing = [s + ".gz" for s in stems if not os.path.isfile(os.path.join(folder, s + ".gz"))]
  if missing:
    pytest.fail(f"no Fashion-MNIST for the tests: {folder} lacks {', '.join(missing)}; install Debian's package "
                f"(`apt-get install dataset-fashion-mnist`, as scripts/bootstrap.sh does) or set {MANUAL_DIR_ENV} "
                "to a folder with the four original .gz files", pytrace=False)
  return folder


@pytest.fixture(scope="session")
def manual_dir(tmp_path_factory) -> str:
  """A TFDS manual_dir with the four original archives: $FMNIST_MANUAL_DIR, else rebuilt from Debian's."""
  folder = data_dir()
  if folder != DEBIAN_DIR:
    return folder
  out = tmp_path_factory.mktemp("manual_dir")
  for name in sorted(os.listdir(DEBIAN_DIR)):
    if name.endswith(".gz"):
      _restore_original_archive(os.path.join(DEBIAN_DIR, name), str(out / name))
  return str(out)


@pytest.fixture(scope="session")
def fmnist():
  """Both splits, canonical order, from the IDX files (fast, no TensorFlow)."""
  import ml_collections

  from fmnist_jax import input_pipeline
  return input_pipeline.load_dataset(ml_collections.ConfigDict(
      dict(source="idx", data_dir=None, manual_dir=None, idx_dirs=(data_dir(),))))


def tiny_config(**overrides):
  """The base config with a small model and short schedule: seconds per run on 2 CPU cores."""
  from fmnist_jax import run_folder
  config = run_folder.default_config()
  config.model.conv_features = (8, 16)
  config.model.dense_features = 32
  config.batch_size = 100
  config.num_train_steps = 30
  config.log_every_steps = 10
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 10
  config.data.source = "idx"  # No TFDS preparation; subprocesses skip TensorFlow via tests/no_tensorflow.
  config.data.idx_dirs = (data_dir(),)
  return with_overrides(config, overrides)


def with_overrides(config, overrides):
  """`config` with {"dotted.field": value} overrides set in place."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def roll_back(workdir: str, keep_through: int) -> None:
  """Removes a run folder's checkpoints after step `keep_through`: what a run stopped there leaves
  (a shorter num_train_steps would change the schedule)."""
  from fmnist_jax import checkpoints  # pylint: disable=g-import-not-at-top
  for step in checkpoints.Checkpointer(workdir, read_only=True).steps():
    if step > keep_through:
      shutil.rmtree(os.path.join(workdir, checkpoints.CHECKPOINT_SUBDIR, str(step)))


def rolled_back_copy(workdir: str, copy: str, keep_through: int) -> str:
  """A copy of a run folder, rolled back to step `keep_through` (see roll_back)."""
  shutil.copytree(workdir, copy)
  roll_back(copy, keep_through)
  return copy


def final_params(workdir):
  """(step, params) of a workdir's newest checkpoint."""
  import jax  # pylint: disable=g-import-not-at-top

  from fmnist_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from fmnist_jax import run_folder  # pylint: disable=g-import-not-at-top
  from fmnist_jax import steps  # pylint: disable=g-import-not-at-top
  config = run_folder.load_config(workdir)
  abstract = jax.eval_shape(lambda stem: steps.create_train_state(config, jax.random.PRNGKey(0), stem).params,
                            steps.abstract_stem_kernel(config))
  return checkpoints.Checkpointer(workdir, read_only=True).restore_params(abstract)


def assert_resume_across_an_epoch_is_bitwise(tmp_path, **overrides) -> str:
  """Trains tiny_config(**overrides) for 40 steps of batch 2000 (30 steps per epoch) straight, and
  stopped at step 20 then resumed into epoch 1: the final parameters must be bitwise equal. Returns
  the straight run's workdir."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from fmnist_jax import train  # pylint: disable=g-import-not-at-top
  args = {**overrides, "batch_size": 2000, "num_train_steps": 40, "checkpoint_every_steps": 10}
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train_and_evaluate(tiny_config(**args), straight)
  train.train_and_evaluate(tiny_config(**{**args, "num_train_steps": 20}), resumed)
  train.train_and_evaluate(tiny_config(**args), resumed)
  for x, y in zip(jax.tree.leaves(final_params(straight)[1]), jax.tree.leaves(final_params(resumed)[1])):
    np.testing.assert_array_equal(x, y)
  return straight


def run_module(args, env=None, timeout=900):
  """Runs `python -m ...` from the repo root; returns the CompletedProcess (text)."""
  full_env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
  return subprocess.run([sys.executable] + list(args), cwd=REPO, env=full_env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """(workdir, final eval metrics) of one trained tiny run, shared read-only by the tests that read runs."""
  from fmnist_jax import train
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  return workdir, train.train_and_evaluate(tiny_config(), workdir)


# config_checks refuses learning rates that diverge; tests of the NaN guard behind it switch the check off,
# in-process (unchecked_optimizer) or as a fmnist_jax.main command line (python -c UNCHECKED_OPTIMIZER_MAIN).
UNCHECKED_OPTIMIZER_MAIN = ("from fmnist_jax import config_checks, main\n"
                            "config_checks.check_optimizer = lambda config: None\nmain.run()\n")


@contextlib.contextmanager
def unchecked_optimizer():
  from fmnist_jax import config_checks
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(config_checks, "check_optimizer", lambda config: None)
    yield
