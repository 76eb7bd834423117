"""Training speed of the real training path (`train.Trainer`), optionally beside PyTorch in one run:
python -m benchmarks.speed --config=experiments/base.py [--steps=N] [--compare=torch] [--config.F=V ...]
prints one JSON line.

Steps run in the same calls as the training loop (fused: the steps between two log/eval/checkpoint
points; step by step: one step), after one warm-up step that compiles the program. The step time is
the median over those calls, which a shared machine's other jobs disturb less than a mean. With a
comparison, JAX and PyTorch calls alternate, from the same initial parameters on the same batches,
so both see the same load and do the same work.
"""

import json
import resource
import statistics
import sys
import time
from typing import Dict, List, Optional, Tuple

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from fmnist_jax import cli
from fmnist_jax import config_checks
from fmnist_jax import errors
from fmnist_jax import input_pipeline
from fmnist_jax import metrics as metrics_lib
from fmnist_jax import runtime
from fmnist_jax import train

COMPARE = ("torch",)


def timed_windows(config, steps_per_epoch: int, num_steps: int, fused: bool) -> List[Tuple[int, int]]:
  """The training loop's [begin, end) calls over steps 1..num_steps (step 0 is the warm-up).

  Fused: the steps between two log/eval/checkpoint points; step by step: one step each.
  """
  if not fused:
    return [(step, step + 1) for step in range(1, num_steps + 1)]
  windows, step = [], 1
  while step <= num_steps:
    end = train.next_boundary(step, num_steps + 1, steps_per_epoch, config)
    windows.append((step, end))
    step = end
  return windows


def peak_host_mem_mb() -> float:
  """Peak resident memory of this process so far."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux.


def _median_ms(windows: List[Tuple[int, float]]) -> float:
  return statistics.median(seconds / steps for steps, seconds in windows) * 1e3


def _torch_trainer(config, trainer: train.Trainer, init_params, allow_tf32: bool):
  try:
    from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top  # Optional extra.
  except ImportError as e:
    raise errors.UserError(f"--compare=torch needs PyTorch ({e}); install it with "
                           "`pip install -e .[bench]`") from e
  images, labels = jax.device_get((trainer.train_images, trainer.train_labels))
  return torch_reference.TorchTrainer(config, images, labels, init_params, allow_tf32)


def describe(config, trainer: train.Trainer) -> Dict:
  """What was measured: platform, versions and the resolved speed options."""
  return {
      "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(), "jax_version": jax.__version__,
      "batch_size": config.batch_size, "dtype": config.dtype, "fused": trainer.fused,
      "model": config.model.name, "conv_impl": trainer.runtime.conv_impl,
      "stem_impl": trainer.runtime.stem_impl if config.model.get("whiten_kernel_size") else None,
      "pool_impl": trainer.runtime.pool_impl if config.model.name == "cnn" else None,
      "xla_options": trainer.runtime.compiler_options,
      "matmul_precision": jax.config.jax_default_matmul_precision or "default",
  }


def run(config, steps: Optional[int] = None, compare: Optional[str] = None) -> Dict:
  """Benchmarks `steps` timed training steps (default: one epoch) and returns the results."""
  config_checks.validate(config, jax.device_count())
  runtime.use_compilation_cache(config.runtime)  # compile_s then measures a cache load where one exists.
  if steps is not None and steps <= 0:
    raise errors.ConfigError(f"--steps={steps} must be a positive number of timed steps")
  if compare not in (None,) + COMPARE:
    raise errors.ConfigError(f"--compare={compare} must be one of {COMPARE}")
  trainer = train.Trainer(config)
  steps = steps or trainer.steps_per_epoch
  result = {**describe(config, trainer), "steps": steps}
  state = trainer.initial_state()
  init_params = jax.device_get(state.params)  # The warm-up step donates the state's buffers.
  start = time.perf_counter()
  state, _ = jax.block_until_ready(trainer.run_steps(state, 0, 1))
  first_step_s = time.perf_counter() - start
  result["peak_host_mem_mb"] = round(peak_host_mem_mb(), 1)  # Before torch adds its own.

  reference = None
  if compare == "torch":
    reference = _torch_trainer(config, trainer, init_params,
                               allow_tf32=result["matmul_precision"] not in ("highest", "float32"))
    perm = np.asarray(input_pipeline.epoch_permutation(trainer.shuffle_key, 0, trainer.num_train))
    reference.run_steps(perm, 0, 1)
  jax_times, torch_times, perms = [], [], {}
  for begin, end in timed_windows(config, trainer.steps_per_epoch, steps, trainer.fused):
    start = time.perf_counter()
    state, acc = jax.block_until_ready(trainer.run_steps(state, begin, end))
    jax_times.append((end - begin, time.perf_counter() - start))
    if reference is not None:
      epoch, index = divmod(begin, trainer.steps_per_epoch)
      if epoch not in perms:
        perms[epoch] = np.asarray(
            input_pipeline.epoch_permutation(trainer.shuffle_key, epoch, trainer.num_train))
      start = time.perf_counter()
      torch_loss = reference.run_steps(perms[epoch], index, end - begin)
      torch_times.append((end - begin, time.perf_counter() - start))
  ms = _median_ms(jax_times)
  per_window = [seconds / n * 1e3 for n, seconds in jax_times]
  result.update({
      "windows": len(jax_times),
      "ms_per_step": round(ms, 3),
      "ms_per_step_range": [round(min(per_window), 3), round(max(per_window), 3)],
      "compile_s": round(first_step_s - ms / 1e3, 3),
      "epoch_s": round(trainer.steps_per_epoch * ms / 1e3, 3),
      "images_per_s": round(config.batch_size / ms * 1e3, 1),
      "loss_last_window": metrics_lib.scalars(acc)["loss"],
  })
  trainer.evaluate(state)  # Compiles the evaluation.
  start = time.perf_counter()
  trainer.evaluate(state)
  result["eval_s"] = round(time.perf_counter() - start, 3)
  stats = jax.local_devices()[0].memory_stats() or {}  # None on the CPU.
  if "peak_bytes_in_use" in stats:
    result["peak_device_mem_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
  if reference is not None:
    import torch  # pylint: disable=g-import-not-at-top
    torch_ms = _median_ms(torch_times)
    result.update({
        "torch_version": torch.__version__, "torch_device": reference.device.type,
        "torch_threads": torch.get_num_threads(),
        "torch_ms_per_step": round(torch_ms, 3),
        "torch_loss_last_window": torch_loss,
        "speedup_vs_torch": round(torch_ms / ms, 3),
    })
    if reference.device.type == "cuda":
      result["torch_tf32"] = torch.backends.cuda.matmul.allow_tf32
  return result


# --- Command line ---------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Only as a program: the tests import this module."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                  lock_config=True)
  flags.DEFINE_integer("steps", None, "Timed training steps after the warm-up step (default: one epoch).")
  flags.DEFINE_enum("compare", None, ["torch"], "Also train the PyTorch reference in the same run.")
  flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE")
  runtime.configure_process(FLAGS.config.runtime)  # Before any JAX work; PyTorch in the same process gets it too.
  print(json.dumps(run(FLAGS.config, FLAGS.steps, FLAGS.compare)))


if __name__ == "__main__":
  _define_flags()
  cli.run_app(main)
