"""Time to accuracy: trains a config for N seeds, one after another, and prints one JSON line:
python -m benchmarks.time_to_accuracy --config=experiments/X.py [--seeds=5] [--baseline=experiments/base.py]
[--baseline_seeds=N] [--config.F=V ...] [--baseline.F=V ...]

Each seed initializes a fresh state and trains all of the config's steps on the real training path
(`train.Trainer`, its compiled programs and host calls), with no evaluation, logging or checkpoint inside the
clock; its final test accuracy is evaluated after the clock stops and logged (stderr) at once. The
programs are compiled once, before the first seed, by two warm-up steps on a throwaway state
(`compile_s`, reported apart); XLA compilations inside the clocks are counted (`compiles_timed`)
and, if any, the run ends with an error after its JSON. Seeds are config.seed, config.seed + 1, ...
`process_s` runs from this module's first line to the print.

With --baseline, that config trains as many seeds as the config (or --baseline_seeds), alternating with it in the same
process (baseline seed i, then config seed i), so that a drift of the machine's speed reaches both;
`train_s_ratio` is this config's mean training time over the baseline's, `train_s_ratios` the
ratio of each pair (targets are such ratios: absolute seconds differ about 2x between CPU
machines). `machine` records the CPU model and its vector instruction sets.

SIGTERM or SIGINT stops it at once with exit code 75 after printing the JSON of the seeds it
finished (`"interrupted": "SIGINT"`). Every flag and both configs are checked before anything trains.
"""

import time

_PROCESS_START = time.perf_counter()  # pylint: disable=wrong-import-position  # Before the heavy imports.

import contextlib  # pylint: disable=g-import-not-at-top,wrong-import-order
import json  # pylint: disable=g-import-not-at-top,wrong-import-order
import os  # pylint: disable=g-import-not-at-top,wrong-import-order
import re  # pylint: disable=g-import-not-at-top,wrong-import-order
import signal  # pylint: disable=g-import-not-at-top,wrong-import-order
import statistics  # pylint: disable=g-import-not-at-top,wrong-import-order
import sys  # pylint: disable=g-import-not-at-top,wrong-import-order
from typing import Callable, Dict, List, Optional  # pylint: disable=g-import-not-at-top,wrong-import-order

from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

from fmnist_jax import cli  # pylint: disable=g-import-not-at-top
from fmnist_jax import config_checks  # pylint: disable=g-import-not-at-top
from fmnist_jax import errors  # pylint: disable=g-import-not-at-top
from fmnist_jax import preemption  # pylint: disable=g-import-not-at-top
from fmnist_jax import runtime  # pylint: disable=g-import-not-at-top
from fmnist_jax import train  # pylint: disable=g-import-not-at-top

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax.monitoring event of each XLA compile.
# The /proc/cpuinfo flags that decide XLA:CPU's arithmetic speed.
CPU_FLAGS = re.compile(r"sse4_2|f16c|fma|avx.*|amx.*")


def cpu_info(path: str = "/proc/cpuinfo") -> Dict:
  """The CPU's model name and its vector instruction-set flags (empty where /proc/cpuinfo is absent)."""
  model, cpu_flags = None, []
  try:
    with open(path) as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
          model = value.strip()
        elif key.strip() == "flags" and not cpu_flags:
          cpu_flags = sorted(x for x in value.split() if CPU_FLAGS.fullmatch(x))
  except OSError:
    pass
  return {"cpu_model": model, "cpu_flags": cpu_flags}


def machine() -> Dict:
  """Where it was measured."""
  return {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
          "num_devices": jax.device_count(), "cpu_count": os.cpu_count(), "jax_version": jax.__version__,
          **cpu_info()}


@contextlib.contextmanager
def counting_compiles():
  """Yields a one-element list: the number of XLA compilations inside the block."""
  count = [0]

  def listen(event, duration, **_):
    del duration
    if event == COMPILE_EVENT:
      count[0] += 1

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


class Timed:
  """One config's trainer, its programs compiled at construction, and the seeds it has trained."""

  def __init__(self, config):
    self.config = config
    self.trainer = trainer = train.Trainer(config)
    start = time.perf_counter()
    # Compiles the initialization and training programs, and (two steps) the merge of their metrics.
    jax.block_until_ready(trainer.run_steps(trainer.initial_states([config]), 0, min(2, trainer.num_steps)))
    self.compile_s = time.perf_counter() - start
    self.seeds: List[int] = []
    self.accuracy: List[float] = []
    self.train_s: List[float] = []
    self.compiles_timed = 0

  def train_seed(self, seed: int) -> None:
    """Trains `seed` from a fresh state inside the clock, then evaluates it outside."""
    trainer = self.trainer
    seeded = self.config.copy_and_resolve_references()
    seeded.seed = seed
    keys = trainer.member_keys([seeded])
    with counting_compiles() as compiles:
      start = time.perf_counter()
      state = trainer.initial_states([seeded])  # Inside the clock: a whitening stem reads the data.
      for begin in range(0, trainer.num_steps, trainer.steps_per_epoch):
        state, _ = trainer.run_steps(state, begin, min(begin + trainer.steps_per_epoch, trainer.num_steps), keys)
      jax.block_until_ready(state)
      seconds = time.perf_counter() - start
    accuracy = trainer.evaluate(state)[0]["accuracy"]
    self.seeds.append(seed)
    self.accuracy.append(accuracy)
    self.train_s.append(seconds)
    self.compiles_timed += compiles[0]
    logging.info("seed %d: test accuracy %.4f after %.3f s of training", seed, accuracy, round(seconds, 3))
    if compiles[0]:
      logging.warning("seed %d: %d XLA compilations inside the timed loop", seed, compiles[0])

  def record(self) -> Dict:
    """The JSON record of the seeds trained so far."""
    n = len(self.seeds)
    return {
        "num_steps": self.trainer.num_steps, "batch_size": self.config.batch_size, "seeds": list(self.seeds),
        "accuracy": list(self.accuracy), "accuracy_mean": statistics.mean(self.accuracy) if n else None,
        "accuracy_std": statistics.stdev(self.accuracy) if n > 1 else 0.0,
        "train_s": [round(s, 3) for s in self.train_s],
        "train_s_mean": round(statistics.mean(self.train_s), 3) if n else None,
        "compile_s": round(self.compile_s, 3), "compiles_timed": self.compiles_timed, "fused": self.trainer.fused,
    }


def summary(timed: Optional[Timed], baseline: Optional[Timed]) -> Dict:
  """The printed record: the config's seeds so far, the baseline's beside them, and their ratio."""
  result = timed.record() if timed is not None else {"seeds": []}
  result["machine"] = machine()
  if baseline is not None:
    result["baseline"] = baseline.record()
    pairs = list(zip(timed.train_s if timed is not None else [], baseline.train_s))
    if pairs:
      result["train_s_ratio"] = round(statistics.mean(timed.train_s) / statistics.mean(baseline.train_s), 4)
      result["train_s_ratios"] = [round(c / b, 4) for c, b in pairs]  # Of each seed and the baseline seed before it.
  result["process_s"] = round(time.perf_counter() - _PROCESS_START, 3)
  return result


def run(config, num_seeds: int, baseline_config=None,
        on_progress: Callable[[Optional[Timed], Optional[Timed]], None] = lambda timed, baseline: None,
        baseline_seeds: Optional[int] = None) -> Dict:
  """Trains `num_seeds` seeds of `config`, alternating with `baseline_seeds` (default: as many) seeds
  of `baseline_config`, each baseline seed first; returns the JSON record. `on_progress(timed,
  baseline)` follows every change of what is finished."""
  baseline_seeds = num_seeds if baseline_seeds is None else baseline_seeds
  if num_seeds <= 0:
    raise errors.ConfigError(f"--seeds={num_seeds} must be a positive number of seeds")
  if baseline_config is not None and not 0 < baseline_seeds <= num_seeds:
    raise errors.ConfigError(f"--baseline_seeds={baseline_seeds} must be between 1 and --seeds={num_seeds}")
  config_checks.validate(config, jax.device_count())
  if baseline_config is not None:
    try:
      config_checks.validate(baseline_config, jax.device_count())
    except errors.ConfigError as e:
      raise errors.ConfigError(f"--baseline: {e}") from e
  runtime.use_compilation_cache(config.runtime)
  baseline = Timed(baseline_config) if baseline_config is not None else None
  on_progress(None, baseline)
  timed = Timed(config)
  on_progress(timed, baseline)
  for i in range(num_seeds):
    if baseline is not None and i < baseline_seeds:
      baseline.train_seed(baseline_config.seed + i)
      on_progress(timed, baseline)
    timed.train_seed(config.seed + i)
    on_progress(timed, baseline)
  return summary(timed, baseline)


# --- Command line ---------------------------------------------------------------------------

FLAGS = flags.FLAGS
CONFIG_FLAGS = ("config", "baseline")


def _define_flags() -> None:
  """Only as a program: the tests import this module. --config is fmnist_jax.main's; this program
  writes no run folder, so main's --workdir and --distributed are removed."""
  from fmnist_jax import main  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import  # Defines --config.
  del FLAGS.workdir
  del FLAGS.distributed
  config_flags.DEFINE_config_file("baseline", None, "Optional config trained as many seeds as --config, "
                                  "alternating with it in the same process, for train_s_ratio "
                                  "(e.g. experiments/base.py).", lock_config=True)
  flags.DEFINE_integer("seeds", 5, "How many seeds to train, one after another.")
  flags.DEFINE_integer("baseline_seeds", None, "How many seeds of --baseline to train, alternating with the "
                       "first ones of --config (default: --seeds).")


def parse_flags(argv: List[str]) -> List[str]:
  """fmnist_jax.main's flag parsing for both config flags: a missing or broken file, an unknown
  --config.F or --baseline.F, a bad --seeds or a stray argument is one `error:` line, exit 2."""
  from fmnist_jax import main as train_cli  # pylint: disable=g-import-not-at-top
  if not cli.asks_for_help(argv):
    for name in CONFIG_FLAGS:
      config = train_cli.load_config_file(train_cli.flag_value(argv, name), f"--{name}")
      argv = cli.last_flag_wins(argv, name, lambda field, c=config: train_cli.field_type(c, field) is bool)
  return train_cli.parse_overrides(argv, CONFIG_FLAGS)


def _print_and_exit_on_signals(latest: Dict) -> None:
  """SIGTERM/SIGINT: print the JSON of the seeds finished (latest["record"]()), one error line, exit 75."""

  def handler(signum, frame):
    del frame
    name = signal.Signals(signum).name
    result = latest["record"]()
    result["interrupted"] = name
    logging.flush()
    print(json.dumps(result), flush=True)
    sys.stderr.write(f"error: stopped by {name}; the JSON above holds the {len(result['seeds'])} seed(s) "
                     "of --config finished\n")
    sys.stderr.flush()
    os._exit(errors.EXIT_INTERRUPTED)  # pylint: disable=protected-access  # Nothing written to wait for.

  for s in preemption.SIGNALS:
    signal.signal(s, handler)


def main(argv):
  del argv  # parse_flags refused positional arguments.
  if FLAGS.seeds <= 0:
    raise errors.ConfigError(f"--seeds={FLAGS.seeds} must be a positive number of seeds")
  baseline_seeds = FLAGS.seeds if FLAGS.baseline_seeds is None else FLAGS.baseline_seeds
  if FLAGS.baseline is not None and not 0 < baseline_seeds <= FLAGS.seeds:
    raise errors.ConfigError(f"--baseline_seeds={baseline_seeds} must be between 1 and --seeds={FLAGS.seeds}")
  config_checks.validate(FLAGS.config)  # Before JAX loads a device.
  if FLAGS.baseline is not None:
    try:
      config_checks.validate(FLAGS.baseline)
    except errors.ConfigError as e:
      raise errors.ConfigError(f"--baseline: {e}") from e
  runtime.configure_process(FLAGS.config.runtime)
  latest = {"record": lambda: summary(None, None)}
  _print_and_exit_on_signals(latest)

  def on_progress(timed, baseline):
    latest["record"] = lambda: summary(timed, baseline)

  result = run(FLAGS.config, FLAGS.seeds, FLAGS.baseline, on_progress, baseline_seeds)
  print(json.dumps(result), flush=True)
  compiles = result["compiles_timed"] + result.get("baseline", {}).get("compiles_timed", 0)
  if compiles:
    errors.fail(f"{compiles} XLA compilation(s) happened inside the timed loops: the times above include "
                "compiling; fix the program so that the warm-up step compiles everything", 1)


if __name__ == "__main__":
  _define_flags()
  cli.run_app(main, parse_flags)
