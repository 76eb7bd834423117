"""The benchmark CLI and library, and fused vs step-by-step training equality (CPU, tiny model)."""

import json
import math

import jax
import numpy as np
import pytest

from benchmarks import speed as benchmark
from experiments import resnet_smoke
from fmnist_jax import errors
from fmnist_jax import train
from tests.conftest import run_module, tiny_config

TINY_FLAGS = [  # tiny_config as command-line overrides.
    "--config.model.conv_features=(8,16)", "--config.model.dense_features=32", "--config.batch_size=100",
    "--config.log_every_steps=10", "--config.eval_every_steps=10", "--config.checkpoint_every_steps=10",
    "--config.data.source=idx", "--config.eval_batch_size=2500",
]


@pytest.mark.slow
def test_cli_prints_one_json_line_of_sane_numbers():
  proc = run_module(["-m", "benchmarks.speed", "--config=experiments/base.py", "--steps=12", *TINY_FLAGS],
                    timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout
  r = json.loads(lines[0])
  assert r["backend"] == "cpu" and r["batch_size"] == 100 and r["steps"] == 12
  assert r["windows"] == 12  # Step by step on the CPU: one call per step.
  assert r["ms_per_step_range"][0] <= r["ms_per_step"] <= r["ms_per_step_range"][1]
  assert r["images_per_s"] == pytest.approx(100 / r["ms_per_step"] * 1e3, rel=1e-3)
  assert r["epoch_s"] == pytest.approx(600 * r["ms_per_step"] / 1e3, rel=1e-3)  # 60000 / 100 steps.
  # Fields filled in; their sizes are the benchmark's to report, not the test's to judge.
  assert r["compile_s"] > 0 and r["eval_s"] > 0 and r["peak_host_mem_mb"] > 0
  assert math.isfinite(r["loss_last_window"]) and r["loss_last_window"] < math.log(10) + 0.5
  assert "torch_ms_per_step" not in r


@pytest.mark.slow
def test_cli_rejects_bad_steps_in_one_line():
  proc = run_module(["-m", "benchmarks.speed", "--config=experiments/base.py", "--steps=0", *TINY_FLAGS],
                    timeout=120)
  assert proc.returncode == errors.EXIT_USER_ERROR
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --steps=0")


@pytest.mark.slow  # Trains whole runs.
def test_run_describes_a_resnet_by_its_resolved_settings():
  config = tiny_config(**{"runtime.conv_impl": "im2col"})
  config.model = resnet_smoke.get_config().model
  r = benchmark.run(config, steps=2)
  assert (r["model"], r["conv_impl"], r["pool_impl"]) == ("resnet", "im2col", None)  # A ResNet has no max-pool.
  assert r["steps"] == 2 and math.isfinite(r["loss_last_window"])


def test_windows_follow_the_training_loop():
  config = tiny_config(log_every_steps=10, eval_every_steps=4, checkpoint_every_steps=100)
  windows = benchmark.timed_windows(config, steps_per_epoch=6, num_steps=13, fused=True)
  assert windows == [(1, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14)]
  assert benchmark.timed_windows(config, 6, 3, fused=False) == [(1, 2), (2, 3), (3, 4)]


@pytest.mark.slow
def test_torch_reference_trains_the_same_model_on_the_same_batches():
  pytest.importorskip("torch")  # The optional `bench` extra.
  r = benchmark.run(tiny_config(), steps=3, compare="torch")
  # Same initial parameters, batches and Adam: the losses agree to float32 rounding.
  assert r["torch_loss_last_window"] == pytest.approx(r["loss_last_window"], rel=1e-4)
  assert r["speedup_vs_torch"] == pytest.approx(r["torch_ms_per_step"] / r["ms_per_step"], rel=1e-2)


@pytest.mark.parametrize("conv_impl", ["im2col", "xla"])
@pytest.mark.slow
def test_fused_and_step_by_step_training_agree(conv_impl):
  # Fused and step-by-step training call the same compiled program (with 4 steps, or 4 times with
  # one), so one trainer serves both and compiles once.
  trainer = train.Trainer(tiny_config(**{"runtime.conv_impl": conv_impl}, batch_size=20))
  results = {}
  for fused in (True, False):
    trainer.fused = fused
    state, metrics = trainer.run_steps(trainer.initial_state(), 0, 4)
    results[fused] = jax.device_get(state.params), float(metrics.compute()["loss"])
  (fused_params, fused_loss), (stepped_params, stepped_loss) = results[True], results[False]
  assert fused_loss == pytest.approx(stepped_loss, rel=1e-6)
  if conv_impl == "im2col":  # Matmuls only: the loop body compiles to the same arithmetic.
    jax.tree.map(np.testing.assert_array_equal, fused_params, stepped_params)
  else:
    # XLA:CPU lowers the kernel-gradient convolutions differently inside the fused loop's body
    # (one `f01b_i01o->01bf` convolution) than in the single step (transposes + a `b01f_01io`
    # convolution), so float32 sums run in another order: a few ulps apart (~5e-8 after 7
    # steps), far below what changes training.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 fused_params, stepped_params)
