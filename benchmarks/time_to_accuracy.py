"""Time to accuracy: trains a config for N seeds, one after another, and prints one JSON line:
python -m benchmarks.time_to_accuracy --config=experiments/X.py [--seeds=5] [--baseline=experiments/base.py]
[--config.F=V ...]

Each seed trains all of the config's steps on the real training path (`train.Trainer`, its compiled
programs and host calls), from a fresh state, with no evaluation, logging or checkpoint inside the
clock; its final test accuracy is evaluated after the clock stops and logged (stderr) at once, so a
long record run that is stopped keeps the seeds it finished. The programs are compiled once,
before the first seed, by a warm-up step on a throwaway state (`compile_s`, reported apart). Seeds
are config.seed, config.seed + 1, ... `process_s` runs from this module's first line to the print.
With --baseline, that config trains one seed the same way in the same process, first, and
`train_s_ratio` is this config's mean training time over the baseline's (targets are such ratios:
absolute seconds differ about 2x between CPU machines).
"""

import time

_PROCESS_START = time.perf_counter()  # pylint: disable=wrong-import-position  # Before the heavy imports.

import json  # pylint: disable=g-import-not-at-top,wrong-import-order
import os  # pylint: disable=g-import-not-at-top,wrong-import-order
import statistics  # pylint: disable=g-import-not-at-top,wrong-import-order
from typing import Dict  # pylint: disable=g-import-not-at-top,wrong-import-order

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

from fmnist_jax import cli  # pylint: disable=g-import-not-at-top
from fmnist_jax import config_checks  # pylint: disable=g-import-not-at-top
from fmnist_jax import errors  # pylint: disable=g-import-not-at-top
from fmnist_jax import runtime  # pylint: disable=g-import-not-at-top
from fmnist_jax import train  # pylint: disable=g-import-not-at-top


def machine() -> Dict:
  """Where it was measured."""
  return {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
          "num_devices": jax.device_count(), "cpu_count": os.cpu_count(), "jax_version": jax.__version__}


def _seeded(config, seed: int):
  config = config.copy_and_resolve_references()
  config.seed = seed
  return config


def run(config, num_seeds: int) -> Dict:
  """Trains `num_seeds` seeds of `config`; returns the JSON record (without process_s)."""
  config_checks.validate(config, jax.device_count())
  if num_seeds <= 0:
    raise errors.ConfigError(f"--seeds={num_seeds} must be a positive number of seeds")
  runtime.use_compilation_cache(config.runtime)
  trainer = train.Trainer(config)
  start = time.perf_counter()
  jax.block_until_ready(trainer.run_steps(trainer.initial_state(), 0, 1))  # Compiles the training programs.
  compile_s = time.perf_counter() - start
  seeds = [config.seed + i for i in range(num_seeds)]
  accuracies, train_s = [], []
  for seed in seeds:
    seeded = _seeded(config, seed)
    keys = trainer.member_keys([seeded])
    state = jax.block_until_ready(trainer.initial_states([seeded]))
    start = time.perf_counter()
    for begin in range(0, trainer.num_steps, trainer.steps_per_epoch):
      state, _ = trainer.run_steps(state, begin, min(begin + trainer.steps_per_epoch, trainer.num_steps), keys)
    jax.block_until_ready(state)
    train_s.append(time.perf_counter() - start)
    accuracies.append(trainer.evaluate(state)[0]["accuracy"])
    logging.info("seed %d: test accuracy %.4f after %.3f s of training", seed, accuracies[-1], round(train_s[-1], 3))
  return {
      "num_steps": trainer.num_steps, "batch_size": config.batch_size, "seeds": seeds,
      "accuracy": accuracies, "accuracy_mean": statistics.mean(accuracies),
      "accuracy_std": statistics.stdev(accuracies) if num_seeds > 1 else 0.0,
      "train_s": [round(s, 3) for s in train_s], "train_s_mean": round(statistics.mean(train_s), 3),
      "compile_s": round(compile_s, 3), "fused": trainer.fused, "machine": machine(),
  }


# --- Command line ---------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Only as a program: the tests import this module."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).", lock_config=True)
  config_flags.DEFINE_config_file("baseline", None, "Optional config trained for one seed first, in the same "
                                  "process, for train_s_ratio (e.g. experiments/base.py).", lock_config=True)
  flags.DEFINE_integer("seeds", 5, "How many seeds to train, one after another.")
  flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE")
  runtime.configure_process(FLAGS.config.runtime)
  baseline = run(FLAGS.baseline, 1) if FLAGS.baseline else None
  result = run(FLAGS.config, FLAGS.seeds)
  if baseline is not None:
    result["baseline"] = baseline
    result["train_s_ratio"] = round(result["train_s_mean"] / baseline["train_s_mean"], 4)
  result["process_s"] = round(time.perf_counter() - _PROCESS_START, 3)
  print(json.dumps(result))


if __name__ == "__main__":
  _define_flags()
  cli.run_app(main)
