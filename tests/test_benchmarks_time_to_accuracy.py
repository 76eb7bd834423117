"""benchmarks.time_to_accuracy: one JSON line with per-seed accuracies and times (not their values)."""

import json
import statistics

import pytest

from tests.conftest import run_module


@pytest.mark.slow
def test_cli_prints_one_json_line_with_per_seed_accuracy_and_times():
  proc = run_module(["-m", "benchmarks.time_to_accuracy", "--config=experiments/resnet_smoke.py", "--seeds=2",
                     "--config.num_train_steps=10", "--config.eval_batch_size=2500"], timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout
  r = json.loads(lines[0])
  assert r["seeds"] == [0, 1] and r["num_steps"] == 10 and len(r["accuracy"]) == len(r["train_s"]) == 2
  assert all(0.0 <= a <= 1.0 for a in r["accuracy"]) and r["accuracy"][0] != r["accuracy"][1]
  assert r["accuracy_mean"] == pytest.approx(statistics.mean(r["accuracy"]))
  assert r["accuracy_std"] == pytest.approx(statistics.stdev(r["accuracy"]))
  assert all(s > 0 for s in r["train_s"]) and r["compile_s"] > 0
  assert r["process_s"] > sum(r["train_s"]) + r["compile_s"]
  assert set(r["machine"]) == {"backend", "device_kind", "num_devices", "cpu_count", "jax_version"}
  assert r["machine"]["backend"] == "cpu"
  for seed, accuracy, seconds in zip(r["seeds"], r["accuracy"], r["train_s"]):  # Logged as each seed ends.
    assert f"seed {seed}: test accuracy {accuracy:.4f} after {seconds:.3f} s of training" in proc.stderr


def test_zero_seeds_is_one_line_error():
  proc = run_module(["-m", "benchmarks.time_to_accuracy", "--config=experiments/resnet_smoke.py", "--seeds=0"],
                    timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == "error: --seeds=0 must be a positive number of seeds"
