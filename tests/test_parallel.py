"""Data parallelism: 8 fake CPU devices train what 1 device trains; a batch must split evenly."""

import json
import os
import textwrap

import pytest

from tests.conftest import final_params, run_module, tiny_config
from tests.test_ensemble import assert_params_close
from tests.test_ensemble import METRIC_ATOL

EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}  # Read when jax starts its backend.
STEPS = 5
CONFIG_ARGS = {"batch_size": 96, "num_train_steps": STEPS, "eval_every_steps": STEPS,  # 96 splits over 8.
               "checkpoint_every_steps": STEPS, "log_every_steps": STEPS,
               "model.conv_features": (4, 8), "model.dense_features": 16,
               "augment.alternate_flip": True}  # Its per-image coins follow the dataset index, not the shard.

# Runs in a fresh process so that XLA_FLAGS applies: a single run, a vmapped pair, and the compiled
# train step (whose gradient must be all-reduced across the devices if the batch is really split).
EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import jax
    from fmnist_jax import steps, train
    from tests.conftest import tiny_config
    root, config_args = sys.argv[1], json.loads(sys.argv[2])
    config = tiny_config(**config_args)
    metrics = train.train_and_evaluate(config, root + "/single")
    outcomes = train.train_and_evaluate_many(
        [config, tiny_config(seed=1, **config_args)], [root + "/member0", root + "/member1"])
    trainer = train.Trainer(config)
    step = jax.jit(functools.partial(steps.train_steps, config=config, mesh=trainer.mesh))
    hlo = step.lower(trainer.abstract_state(), trainer.train_images, trainer.train_labels,
                     jax.numpy.arange(trainer.num_train), trainer.step_key, 0, 1).compile().as_text()
    print(json.dumps({"devices": jax.device_count(), "metrics": metrics, "member0": outcomes[0].metrics,
                      "all_reduce": "all-reduce" in hlo}))
""")


@pytest.fixture(scope="module")
def eight_device_runs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("eight_devices"))
  r = run_module(["-c", EIGHT_DEVICE_SCRIPT, root, json.dumps(CONFIG_ARGS)], env=EIGHT_DEVICES, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return root, json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  import jax  # pylint: disable=g-import-not-at-top

  from fmnist_jax import train  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 1
  workdir = str(tmp_path_factory.mktemp("one_device"))
  return workdir, train.train_and_evaluate(tiny_config(**CONFIG_ARGS), workdir)


@pytest.mark.slow
def test_parallel_eight_fake_devices_split_the_batch(eight_device_runs):
  _, report = eight_device_runs
  assert report["devices"] == 8
  assert report["all_reduce"]  # Gradients summed across devices: each device saw a slice of the batch.


@pytest.mark.slow
def test_parallel_eight_devices_train_what_one_device_trains(eight_device_runs, one_device_run):
  root, report = eight_device_runs
  workdir, metrics = one_device_run
  assert_params_close(final_params(os.path.join(root, "single"))[1], final_params(workdir)[1])
  for name, value in metrics.items():
    assert report["metrics"][name] == pytest.approx(value, abs=METRIC_ATOL), name


@pytest.mark.slow
def test_parallel_vmapped_members_on_eight_devices_match_one_device(eight_device_runs, one_device_run):
  root, report = eight_device_runs
  workdir, metrics = one_device_run
  assert_params_close(final_params(os.path.join(root, "member0"))[1], final_params(workdir)[1])
  assert report["member0"]["accuracy"] == pytest.approx(metrics["accuracy"], abs=METRIC_ATOL)


def test_parallel_batch_not_divisible_by_the_device_count_is_one_line_error(tmp_path):
  r = run_module(["-m", "fmnist_jax.main", "--config=experiments/base.py", f"--workdir={tmp_path / 'run'}",
                  "--config.batch_size=100", "--config.data.source=idx"], env=EIGHT_DEVICES, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last == ("error: config.batch_size=100 is not divisible by the 8 devices; use a multiple of 8"), last
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "run")  # Refused before anything was written.


def test_parallel_distributed_flag_outside_a_cluster_is_one_line_error(tmp_path):
  r = run_module(["-m", "fmnist_jax.main", "--config=experiments/base.py", f"--workdir={tmp_path / 'run'}",
                  "--distributed"], timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith("error: --distributed: jax.distributed.initialize() failed")
  assert "Traceback" not in r.stderr
