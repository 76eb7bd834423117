"""Training cost of N seeds of one config, vmapped (one program) vs one run after another, as JSON:

  python -m benchmarks.sweep_cost --config=experiments/base.py --num_seeds=16 --steps=5 \
      [--vmap_members=4] [--sequential_seeds=4] [--config.FIELD=VALUE ...]

For each way: XLA compile seconds (jax.monitoring), the first step of each program (compile + run),
and seconds per model per step over `--steps` further steps. Vmapped groups of `--vmap_members` share
one trainer, as in the sweep runner. One run after another builds each run's trainer as the
sweep runner does (its own compile); `--sequential_seeds` measures only the first few of them, which
all cost the same. Evaluation (the full test split) is timed once per way, after a warm-up. With
`--config.runtime.compilation_cache_dir` (the sweep CLI's default), later runs load their programs.
"""

import json
import os
import resource
import time

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).", lock_config=True)
flags.DEFINE_integer("num_seeds", 16, "Seeds trained vmapped.")
flags.DEFINE_integer("steps", 5, "Timed steps after the first one.")
flags.DEFINE_integer("sequential_seeds", None, "Seeds measured one after another (default: num_seeds).")
flags.DEFINE_integer("vmap_members", None, "Seeds per vmapped program, as the sweep's flag (default: all).")
flags.mark_flag_as_required("config")


def _timed(fn):
  start, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - start, time.process_time() - cpu


def _vmapped(config, seeds, steps, group_size):
  """Groups of `group_size` seeds, one after another, sharing one trainer as the sweep runner does."""
  import jax  # pylint: disable=g-import-not-at-top

  from fmnist_jax import sweep  # pylint: disable=g-import-not-at-top
  from fmnist_jax import train  # pylint: disable=g-import-not-at-top
  trainer, setup_s, _ = _timed(lambda: train.Trainer(config, vmapped=True))
  compile_s = first_s = steps_s = steps_cpu = 0.0
  for start in range(0, len(seeds), group_size):
    group = seeds[start:start + group_size]
    configs = [_seeded(config, s) for s in group]
    keys = trainer.member_keys(configs)
    with sweep.compile_seconds() as compiling:
      states, seconds, _ = _timed(lambda: jax.block_until_ready(trainer.run_steps(
          trainer.initial_states(configs), 0, 1, keys)[0]))
    compile_s, first_s = compile_s + compiling[0], first_s + seconds
    states, seconds, cpu = _timed(lambda: jax.block_until_ready(trainer.run_steps(states, 1, 1 + steps, keys)[0]))
    steps_s, steps_cpu = steps_s + seconds, steps_cpu + cpu
    if not start:
      eval_s = _eval_seconds(lambda: trainer.evaluate(states)) / len(group)
  return {"models": len(seeds), "group_size": group_size, "data_s": setup_s, "compile_s": compile_s,
          "first_steps_s": first_s, "step_s_per_model": steps_s / steps / len(seeds),
          "step_cpu_s_per_model": steps_cpu / steps / len(seeds), "eval_s_per_model": eval_s}


def _eval_seconds(evaluate):
  """One full test-split evaluation, after a first one that compiles."""
  evaluate()
  return _timed(evaluate)[1]


def _sequential(config, seeds, steps):
  import jax  # pylint: disable=g-import-not-at-top

  from fmnist_jax import sweep  # pylint: disable=g-import-not-at-top
  from fmnist_jax import train  # pylint: disable=g-import-not-at-top
  per_run = []
  for seed in seeds:
    trainer, setup_s, _ = _timed(lambda seed=seed: train.Trainer(_seeded(config, seed)))
    with sweep.compile_seconds() as compiling:
      state, first_s, _ = _timed(lambda: jax.block_until_ready(trainer.run_steps(trainer.initial_state(), 0, 1)[0]))
    state, steps_s, steps_cpu = _timed(
        lambda state=state: jax.block_until_ready(trainer.run_steps(state, 1, 1 + steps)[0]))
    per_run.append({"data_s": setup_s, "compile_s": compiling[0], "first_step_s": first_s,
                    "step_s_per_model": steps_s / steps, "step_cpu_s_per_model": steps_cpu / steps})
    if not per_run[1:]:
      per_run[0]["eval_s_per_model"] = _eval_seconds(lambda state=state: trainer.evaluate(state))
  mean = {k: sum(r[k] for r in per_run if k in r) / sum(k in r for r in per_run) for k in per_run[0]}
  return {"models": len(seeds), "mean_per_run": mean, "runs": per_run}


def _seeded(config, seed):
  config = config.copy_and_resolve_references()
  config.seed = seed
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE")
  from fmnist_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_process(FLAGS.config.runtime)  # Before any JAX work, as the sweep CLI (compilation cache included).
  import jax  # pylint: disable=g-import-not-at-top
  config, steps = FLAGS.config, FLAGS.steps
  seeds = list(range(FLAGS.num_seeds))
  load_before = os.getloadavg()
  result = {"backend": jax.default_backend(), "devices": jax.device_count(), "steps": steps,
            "batch_size": config.batch_size,
            "vmapped": _vmapped(config, seeds, steps, FLAGS.vmap_members or len(seeds)),
            "sequential": _sequential(config, seeds[:FLAGS.sequential_seeds or len(seeds)], steps),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # Linux: KiB.
            "load_average_before_after": [load_before[0], os.getloadavg()[0]]}
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
