"""The per-layer benchmark times the ops the model runs, and only after JAX and PyTorch agree on them."""

import json

import pytest

from benchmarks import layers as layer_benchmark
from fmnist_jax import errors
from tests.conftest import run_module, tiny_config

pytest.importorskip("torch")  # The optional `bench` extra (installed by scripts/bootstrap.sh).


def test_ops_are_the_models_layers_with_their_flop_counts():
  config = tiny_config()  # conv 8 → 16 (5×5), dense 32, batch 100.
  result = layer_benchmark.run(config, repeats=1)
  ops = result["ops"]
  assert list(ops) == ["conv1_forward", "conv1_weight_grad", "conv2_forward", "conv2_input_grad",
                       "conv2_weight_grad", "dense_forward", "dense_input_grad", "dense_weight_grad"]
  assert ops["conv1_forward"]["gflop"] == pytest.approx(2 * 100 * 28 * 28 * 8 * 1 * 25 / 1e9, abs=1e-3)
  assert ops["conv2_weight_grad"]["gflop"] == pytest.approx(2 * 100 * 14 * 14 * 16 * 8 * 25 / 1e9, abs=1e-3)
  assert ops["dense_forward"]["gflop"] == pytest.approx(2 * 100 * (7 * 7 * 16) * 32 / 1e9, abs=1e-3)
  assert result["jax_total_ms"] == pytest.approx(sum(o["jax_ms"] for o in ops.values()), abs=0.05)
  for op in ops.values():
    assert op["jax_ms"] > 0 and op["torch_ms"] > 0


def test_a_jax_op_that_disagrees_with_pytorch_is_never_timed(monkeypatch):
  real = layer_benchmark.layer_ops
  def off_by_a_bit(config):
    ops = real(config)
    return [op._replace(jax_fn=lambda *a, f=op.jax_fn: f(*a) * 1.01) if op.name == "conv2_input_grad" else op
            for op in ops]
  monkeypatch.setattr(layer_benchmark, "layer_ops", off_by_a_bit)
  with pytest.raises(AssertionError, match="conv2_input_grad"):
    layer_benchmark.run(tiny_config(), repeats=1)


@pytest.mark.slow
def test_cli_prints_one_json_line_and_rejects_bad_repeats():
  flags = ["--config.model.conv_features=(8,16)", "--config.model.dense_features=32", "--config.batch_size=20"]
  proc = run_module(["-m", "benchmarks.layers", "--config=experiments/base.py", "--repeats=1", *flags],
                    timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (line,) = proc.stdout.strip().splitlines()
  assert json.loads(line)["batch_size"] == 20
  proc = run_module(["-m", "benchmarks.layers", "--config=experiments/base.py", "--repeats=0"], timeout=120)
  assert proc.returncode == errors.EXIT_USER_ERROR
  assert proc.stderr.strip().splitlines()[-1] == "error: --repeats=0 must be a positive number of timed calls"
