"""benchmarks.time_to_accuracy: one JSON line with per-seed accuracies and times (not their values),
the baseline alternated with the config, its flag errors in one line, and its interrupt."""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, run_module

NO_TF = {"PYTHONPATH": os.pathsep.join([os.path.join(REPO, "tests", "no_tensorflow"), REPO])}
TTA = ["-m", "benchmarks.time_to_accuracy"]


def tiny_config_file(tmp_path, name: str = "tiny.py", **overrides) -> str:
  """A config file whose get_config() is tests.conftest.tiny_config(**overrides)."""
  path = tmp_path / name
  path.write_text("from tests.conftest import tiny_config\n\n\ndef get_config():\n"
                  f"  return tiny_config(**{overrides!r})\n")
  return str(path)


@pytest.mark.slow
def test_cli_prints_one_json_line_with_per_seed_accuracy_and_times():
  proc = run_module([*TTA, "--config=experiments/resnet_smoke.py", "--seeds=2",
                     "--config.num_train_steps=10", "--config.eval_batch_size=2500"], timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout
  r = json.loads(lines[0])
  assert r["seeds"] == [0, 1] and r["num_steps"] == 10 and len(r["accuracy"]) == len(r["train_s"]) == 2
  assert all(0.0 <= a <= 1.0 for a in r["accuracy"]) and r["accuracy"][0] != r["accuracy"][1]
  assert r["accuracy_mean"] == pytest.approx(statistics.mean(r["accuracy"]))
  assert r["accuracy_std"] == pytest.approx(statistics.stdev(r["accuracy"]))
  assert all(s > 0 for s in r["train_s"]) and r["compile_s"] > 0 and r["compiles_timed"] == 0
  assert r["process_s"] > sum(r["train_s"]) + r["compile_s"]
  assert set(r["machine"]) == {"backend", "device_kind", "num_devices", "cpu_count", "jax_version", "cpu_model",
                               "cpu_flags"}
  assert r["machine"]["backend"] == "cpu"
  for seed, accuracy, seconds in zip(r["seeds"], r["accuracy"], r["train_s"]):  # Logged as each seed ends.
    assert f"seed {seed}: test accuracy {accuracy:.4f} after {seconds:.3f} s of training" in proc.stderr


def _within_rounding(ratio: float, seconds: float, base_seconds: float) -> bool:
  """`ratio` (rounded to 4 decimals) is seconds / base_seconds of the unrounded times, which the record
  rounds to the millisecond: tiny runs take a few of them, so the bounds follow the rounding."""
  low, high = (seconds - 5e-4) / (base_seconds + 5e-4), (seconds + 5e-4) / max(base_seconds - 5e-4, 1e-9)
  return low - 5e-5 <= ratio <= high + 5e-5


@pytest.mark.slow
def test_baseline_trains_as_many_seeds_alternating_with_the_config(tmp_path):
  config = tiny_config_file(tmp_path, "tiny.py")
  baseline = tiny_config_file(tmp_path, "baseline.py", **{"model.conv_features": (16, 16)})
  proc = run_module([*TTA, f"--config={config}", f"--baseline={baseline}", "--seeds=2",
                     "--baseline.num_train_steps=20"], env=NO_TF, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  r = json.loads(proc.stdout.strip())
  b = r["baseline"]
  assert r["seeds"] == b["seeds"] == [0, 1] and r["num_steps"] == 30 and b["num_steps"] == 20
  assert r["compiles_timed"] == b["compiles_timed"] == 0
  assert _within_rounding(r["train_s_ratio"], r["train_s_mean"], b["train_s_mean"])
  assert all(_within_rounding(q, c, s) for q, c, s in zip(r["train_s_ratios"], r["train_s"], b["train_s"]))
  # Alternating: baseline seed 0, config seed 0, baseline seed 1, config seed 1.
  logged = [line for line in proc.stderr.splitlines() if ": test accuracy " in line]
  expected = [f"after {b['train_s'][0]:.3f}", f"after {r['train_s'][0]:.3f}", f"after {b['train_s'][1]:.3f}",
              f"after {r['train_s'][1]:.3f}"]
  assert all(e in line for e, line in zip(expected, logged)), logged


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_prints_the_finished_seeds_and_exits_75(tmp_path, signum):
  config = tiny_config_file(tmp_path, **{"num_train_steps": 300})
  proc = subprocess.Popen([sys.executable, *TTA, f"--config={config}", "--seeds=50"], cwd=REPO,
                          env={**os.environ, **NO_TF}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    for line in proc.stderr:  # Waits until the first seed is finished.
      if "seed 0: test accuracy" in line:
        break
    time.sleep(0.5)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 75, stderr[-2000:]
  assert "Traceback" not in stderr and "Fatal" not in stderr
  assert stderr.strip().splitlines()[-1].startswith(f"error: stopped by {signal.Signals(signum).name}")
  r = json.loads(stdout.strip())
  assert r["interrupted"] == signal.Signals(signum).name
  assert r["seeds"][0] == 0 and len(r["seeds"]) == len(r["accuracy"]) == len(r["train_s"]) < 50


@pytest.mark.parametrize("args, message", [
    (["--baseline=no/such.py"], "error: --baseline=no/such.py: no such file; point it at a file defining get_config()"),
    (["--config.nope=1"], "error: unknown config field 'nope'"),
    (["--baseline=experiments/base.py", "--baseline.nope=1"], "error: unknown config field 'nope'"),
    (["--seeds=x"], "error: flag --seeds=x: invalid literal for int()"),
    (["stray"], "error: unexpected arguments stray"),
    (["--seeds=0"], "error: --seeds=0 must be a positive number of seeds"),
    (["--seeds=0", "--baseline=experiments/base.py"], "error: --seeds=0 must be a positive number of seeds"),
    (["--baseline=experiments/base.py", "--baseline.batch_size=0"], "error: --baseline: config.batch_size=0"),
    (["--baseline=experiments/base.py", "--seeds=2", "--baseline_seeds=3"],
     "error: --baseline_seeds=3 must be between 1 and --seeds=2"),
])
def test_flag_mistakes_are_one_line_before_anything_trains(args, message):
  start = time.perf_counter()
  proc = run_module([*TTA, "--config=experiments/resnet_smoke.py", *args], env=NO_TF, timeout=300)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-1000:]
  assert "Runtime:" not in proc.stderr and time.perf_counter() - start < 120  # No trainer was built.


def test_cpu_info_reads_the_model_and_the_vector_flags(tmp_path):
  from benchmarks import time_to_accuracy
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f "
                     "avx512_bf16 amx_tile ht\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n")
  assert time_to_accuracy.cpu_info(str(cpuinfo)) == {
      "cpu_model": "AMD EPYC", "cpu_flags": ["amx_tile", "avx", "avx2", "avx512_bf16", "avx512f", "fma", "sse4_2"]}
  assert time_to_accuracy.cpu_info(str(tmp_path / "absent")) == {"cpu_model": None, "cpu_flags": []}


def test_counting_compiles_counts_each_new_program_once():
  import jax
  import jax.numpy as jnp

  from benchmarks import time_to_accuracy
  f = jax.jit(lambda x: x * 3 + 1)
  x = jnp.ones(17).block_until_ready()
  with time_to_accuracy.counting_compiles() as count:
    f(x).block_until_ready()
    f(x).block_until_ready()
  assert count[0] == 1
  with time_to_accuracy.counting_compiles() as count:
    f(x).block_until_ready()
  assert count[0] == 0
