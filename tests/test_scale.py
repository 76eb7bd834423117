"""Installing for an accelerator, TensorFlow kept off the GPUs, the profiler, and the one-process
case of the agreement between processes (tests/test_distributed.py runs several)."""

import configparser
import glob
import os
import re

import pytest

from fmnist_jax import config_checks
from fmnist_jax import errors
from fmnist_jax import parallel
from fmnist_jax import profiling
from fmnist_jax import train
from tests.conftest import REPO, tiny_config


def test_accelerator_extras_pull_jax_own_extras():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"))
  extras = cfg["options.extras_require"]
  for name in ("cuda12", "cuda13", "tpu"):
    assert re.match(rf"jax\[{name}\]", extras[name].strip()), extras[name]
  with open(os.path.join(REPO, "scripts", "bootstrap.sh")) as f:
    assert 'EXTRAS="${EXTRAS:-dev,bench}"' in f.read()


def test_every_tensorflow_import_goes_through_tf_compat():
  """tf_compat.import_tensorflow hides the GPUs from TensorFlow: a module that imports TensorFlow, TFDS or
  CLU's writers (which import TensorFlow) calls it first."""
  heavy = re.compile(r"^\s*(import tensorflow|from tensorflow|import tensorflow_datasets|from clu import metric_writers"
                     r"|import clu.metric_writers|from clu import periodic_actions)", re.M)
  for path in glob.glob(os.path.join(REPO, "fmnist_jax", "*.py")) + glob.glob(os.path.join(REPO, "benchmarks", "*.py")):
    if path.endswith("tf_compat.py"):
      continue
    with open(path) as f:
      text = f.read()
    for match in heavy.finditer(text):
      before = text[:match.start()]
      function = before[before.rfind("\ndef "):]
      assert "tf_compat.import_tensorflow()" in function, f"{path}: {match.group(1)} outside tf_compat"


@pytest.mark.parametrize("steps", [(3, 3), (5, 2), (-1, 2), (1,), (1.0, 2), (True, 2)])
def test_profile_steps_are_checked(steps):
  config = tiny_config(**{"runtime.profile_steps": steps})
  with pytest.raises(errors.ConfigError, match=r"^config.runtime.profile_steps=.* must be \(start, stop\)"):
    config_checks.check_runtime(config.runtime)


def test_distributed_timeouts_are_checked():
  config = tiny_config()
  config.runtime.distributed_heartbeat_timeout_s = 0
  with pytest.raises(errors.ConfigError, match="distributed_heartbeat_timeout_s=0 must be a positive integer"):
    config_checks.check_runtime(config.runtime)


def test_one_process_agrees_with_itself_without_collectives():
  assert parallel.any_process(True) and not parallel.any_process(False)
  assert parallel.all_processes(True) and not parallel.all_processes(False)
  assert not parallel.peer_lost(RuntimeError("Gloo all-reduce failed: Connection closed by peer"))  # One process.


def test_the_loop_stops_at_the_profiled_steps():
  config = tiny_config(**{"runtime.profile_steps": (3, 7)})
  assert train.next_boundary(0, 30, 600, config) == 3
  assert train.next_boundary(3, 30, 600, config) == 7
  assert train.next_boundary(7, 30, 600, config) == 10


@pytest.mark.slow  # Trains a run.
def test_profile_steps_write_a_trace_for_tensorboard(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(**{"runtime.profile_steps": (2, 4), "num_train_steps": 6}), workdir)
  traces = glob.glob(os.path.join(profiling.trace_dir(workdir), "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
