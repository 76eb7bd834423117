"""Where the step time goes: each convolution and dense product of the model, forward and backward, in
JAX (as the training step compiles it) and in PyTorch, timed on the same inputs in the same run.

The whole-step benchmark says who is faster; this says which layer makes the difference. Each JAX op
is jitted with the run's XLA options (`runtime.resolve(...).compiler_options`) and its result is checked against
PyTorch's before anything is timed, so both sides compute the same thing.
"""

import json
import statistics
import time
from typing import Callable, Dict, List, NamedTuple, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

import fmnist_jax
from fmnist_jax import cli
from fmnist_jax import errors
from fmnist_jax import runtime


class Op(NamedTuple):
  name: str
  gflop: float
  jax_fn: Callable  # (*NHWC/HWIO arrays) -> array
  torch_fn: Callable  # (*NCHW/OIHW tensors) -> tensor, the same op
  args: Sequence[np.ndarray]  # JAX layouts
  to_torch: Sequence[Sequence[int]]  # Axis order that turns each arg into the torch layout.
  out_to_jax: Sequence[int]  # Axis order that turns torch's result into JAX's layout.


def _conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def layer_ops(config) -> List[Op]:
  """The model's convolutions (forward, input and weight gradients) and hidden dense product."""
  from torch.nn import grad  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top  # The optional `bench` extra.
  m, batch = config.model, config.batch_size
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.standard_normal(shape, np.float32)
  (height, width, channels), ops = fmnist_jax.IMAGE_SHAPE, []
  kh, kw = m.kernel_size
  for i, features in enumerate(m.conv_features):
    x, w, dy = normal(batch, height, width, channels), normal(kh, kw, channels, features), normal(
        batch, height, width, features)
    gflop = 2 * batch * height * width * features * channels * kh * kw / 1e9
    nchw, oihw = (0, 3, 1, 2), (3, 2, 0, 1)
    padding = (kh // 2, kw // 2)
    ops.append(Op(f"conv{i + 1}_forward", gflop, _conv, lambda x, w, p=padding: F.conv2d(x, w, padding=p),
                  (x, w), (nchw, oihw), (0, 2, 3, 1)))
    if i > 0:  # The first convolution's input is the data: training never needs its gradient.
      ops.append(Op(f"conv{i + 1}_input_grad", gflop, lambda x, w, dy: jax.vjp(_conv, x, w)[1](dy)[0],
                    lambda x, w, dy, p=padding: grad.conv2d_input(x.shape, w, dy, padding=p),
                    (x, w, dy), (nchw, oihw, nchw), (0, 2, 3, 1)))
    ops.append(Op(f"conv{i + 1}_weight_grad", gflop, lambda x, w, dy: jax.vjp(_conv, x, w)[1](dy)[1],
                  lambda x, w, dy, p=padding: grad.conv2d_weight(x, w.shape, dy, padding=p),
                  (x, w, dy), (nchw, oihw, nchw), (2, 3, 1, 0)))
    height, width, channels = height // m.pool_size[0], width // m.pool_size[1], features
  flat, hidden = height * width * channels, m.dense_features
  a, k, dz = normal(batch, flat), normal(flat, hidden), normal(batch, hidden)
  gflop = 2 * batch * flat * hidden / 1e9
  keep = ((0, 1), (0, 1))
  ops.append(Op("dense_forward", gflop, jnp.matmul, lambda a, k: a @ k, (a, k), keep, (0, 1)))
  ops.append(Op("dense_input_grad", gflop, lambda dz, k: dz @ k.T, lambda dz, k: dz @ k.T, (dz, k), keep, (0, 1)))
  ops.append(Op("dense_weight_grad", gflop, lambda a, dz: a.T @ dz, lambda a, dz: a.T @ dz, (a, dz), keep, (0, 1)))
  return ops


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
  fn()  # Warm-up (and JAX's compile).
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def run(config, repeats: int = 11) -> Dict:
  """{op: {jax_ms, torch_ms, gflop, jax_gflop_per_s, torch_gflop_per_s}}, plus totals and the setup."""
  if repeats <= 0:
    raise errors.ConfigError(f"--repeats={repeats} must be a positive number of timed calls")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.UserError(f"the layer benchmark needs PyTorch ({e}); install it with `pip install -e .[bench]`") from e
  options = runtime.resolve(config.runtime).compiler_options
  result = {"backend": jax.default_backend(), "jax_version": jax.__version__, "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(), "batch_size": config.batch_size,
            "xla_options": options, "repeats": repeats, "ops": {}}
  for op in layer_ops(config):
    jitted = jax.jit(op.jax_fn, compiler_options=options)
    jax_args = [jnp.asarray(a) for a in op.args]
    torch_args = [torch.from_numpy(np.ascontiguousarray(np.transpose(a, axes)))
                  for a, axes in zip(op.args, op.to_torch)]
    with torch.no_grad():
      expected = np.transpose(op.torch_fn(*torch_args).numpy(), op.out_to_jax)
      got = np.asarray(jitted(*jax_args))
      scale = float(np.max(np.abs(expected))) or 1.0
      if got.shape != expected.shape or float(np.max(np.abs(got - expected))) > 1e-4 * scale:
        raise AssertionError(f"{op.name}: JAX and PyTorch disagree; the comparison would be meaningless")
      jax_ms = _median_ms(lambda: jax.block_until_ready(jitted(*jax_args)), repeats)
      torch_ms = _median_ms(lambda: op.torch_fn(*torch_args), repeats)
    result["ops"][op.name] = {"gflop": round(op.gflop, 3), "jax_ms": round(jax_ms, 2), "torch_ms": round(torch_ms, 2),
                              "jax_gflop_per_s": round(op.gflop / jax_ms * 1e3, 1),
                              "torch_gflop_per_s": round(op.gflop / torch_ms * 1e3, 1)}
  result["jax_total_ms"] = round(sum(o["jax_ms"] for o in result["ops"].values()), 2)
  result["torch_total_ms"] = round(sum(o["torch_ms"] for o in result["ops"].values()), 2)
  return result


# --- Command line ---------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Only as a program: the tests import this module."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                  lock_config=True)
  flags.DEFINE_integer("repeats", 11, "Timed calls per op; the median is reported.")
  flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE")
  runtime.configure_process(FLAGS.config.runtime)  # Before any JAX work; PyTorch in the same process gets it too.
  print(json.dumps(run(FLAGS.config, FLAGS.repeats)))


if __name__ == "__main__":
  _define_flags()
  cli.run_app(main)
