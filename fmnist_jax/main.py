"""Command line: python -m fmnist_jax.main --config=experiments/base.py --workdir=runs/x [--config.F=V]."""

import logging as std_logging
import os
from typing import Optional

from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from fmnist_jax import cli
from fmnist_jax import config_checks
from fmnist_jax import errors
from fmnist_jax import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py); override any of "
                                "its fields with --config.FIELD=VALUE (--help lists them).", lock_config=True)
cli.define_workdir("Folder for checkpoints, event files and the resolved config.", required=True)
flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize() first; start one "
                  "process per host with the same flags.")
flags.mark_flag_as_required("config")


def quiet_library_logs() -> None:
  """Orbax logs every save step at INFO through absl, and a failed write as tracebacks from its
  threads (which train reports in one line): keep its warnings and errors, one line each."""

  def keep(record) -> bool:
    if "/orbax/" not in record.pathname:
      return True
    record.exc_info = record.exc_text = None
    return record.levelno >= std_logging.WARNING

  logging.get_absl_logger().addFilter(keep)


def parse_flags(argv):
  """absl's flag parsing, with every mistake reported in one line and exit code 2.

  The config file is loaded here first, so that its own errors (a missing file, a syntax error, no
  get_config(), a get_config() that raises) are reported with their cause, and a repeated
  --config.FIELD takes its last value whatever its type. ml_collections raises an unknown
  --config.FIELD as AttributeError: absl would print a traceback.
  """
  if not cli.asks_for_help(argv):
    config = load_config_file(_flag_value(argv, "config"))
    argv = cli.last_flag_wins(argv, "config", lambda field: _field_type(config, field) is bool)
  try:
    return cli.parse_flags(argv, more_help=config_fields)
  except (AttributeError, KeyError) as e:  # AttributeError(KeyError("'name'\nDid you mean ...")).
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    errors.fail(f"unknown config field {cli.one_line(e.args[0] if e.args else e)}; a --config.FIELD flag must "
                "name a field of the config file", errors.EXIT_USER_ERROR)


def load_config_file(spec: Optional[str]):
  """The ConfigDict of `--config=PATH[:ARG]` (ml_collections passes ARG to get_config); ConfigError if
  the file cannot give one. None when the flag is absent (absl then reports the required flag)."""
  if spec is None:
    return None
  path, arg = (spec, None) if os.path.isfile(spec) or ":" not in spec else spec.split(":", 1)
  config = cli.call_file_function(path, "get_config", "--config", *([arg] if arg is not None else []))
  if not isinstance(config, ml_collections.ConfigDict):
    raise errors.ConfigError(f"--config={path}: get_config() returned {type(config).__name__}; return an "
                             "ml_collections.ConfigDict")
  return config


def _flag_value(argv, name: str) -> Optional[str]:
  """The last value of --name in `argv` (`--name=v` or `--name v`), else None."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    if arg.lstrip("-") == name and arg.startswith("-") and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith("-") and arg.lstrip("-").startswith(f"{name}="):
      value = arg.split("=", 1)[1]
  return value


def _field_type(config, field: str):
  """The type of the dotted `field` of `config`, or None if it has no such field."""
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    return None
  return node.get_type(leaf)


def config_fields() -> str:
  """The --config.FIELD flags with base.py's values, for --help (each field's comment is in base.py)."""
  from fmnist_jax import run_folder  # pylint: disable=g-import-not-at-top
  lines = [f"  --config.{name}={value!r}" for name, value in run_folder.flat(run_folder.default_config())]
  return ("The config fields with the values of experiments/base.py, where each has a comment "
          "(override with --config.FIELD=VALUE):\n" + "\n".join(lines))


def setup_process() -> None:
  """Before any JAX work (shared with fmnist_jax.sweep): quiet logs, the runtime settings, joining the hosts."""
  quiet_library_logs()
  runtime.configure_process(FLAGS.config.runtime)
  if FLAGS.distributed:
    import jax  # pylint: disable=g-import-not-at-top
    try:  # Coordinator, process count and id come from the cluster: Cloud TPU, SLURM, Open MPI, k8s.
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      errors.fail(f"--distributed: jax.distributed.initialize() failed ({cli.one_line(e)}); start one process "
                  "per host with srun, mpirun or `gcloud compute tpus tpu-vm ssh --worker=all`", errors.EXIT_USER_ERROR)
    logging.info("Process %d of %d", jax.process_index(), jax.process_count())


def main(argv):
  del argv  # parse_flags refused positional arguments.
  config_checks.validate(FLAGS.config)  # Before JAX and TensorFlow load.
  setup_process()
  from fmnist_jax import train  # pylint: disable=g-import-not-at-top  # After flags: keeps --help fast.
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run() -> None:
  """The `fmnist-train` console script."""
  cli.run_app(main, parse_flags, help_modules=[__name__])


if __name__ == "__main__":
  run()
