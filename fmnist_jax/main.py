"""Command line: python -m fmnist_jax.main --config=experiments/base.py --workdir=runs/x [--config.F=V]."""

import logging as std_logging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fmnist_jax import cli
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

  ml_collections raises an unknown --config.FIELD as AttributeError, and a config file that fails
  to load only when first read: absl would print tracebacks for both.
  """
  try:
    rest = cli.parse_flags(argv, more_help=config_fields)
    FLAGS.config.keys()  # A config file that failed to load raises here, not mid-run.
    return rest
  except (AttributeError, KeyError) as e:  # AttributeError(KeyError("'name'\nDid you mean ...")).
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    errors.fail(f"unknown config field {cli.one_line(e.args[0] if e.args else e)}; a --config.FIELD flag must "
                "name a field of the config file", errors.EXIT_USER_ERROR)
  except OSError as e:
    reason = (str(e.__cause__ or e).strip().splitlines() or [type(e).__name__])[-1]
    errors.fail(f"the --config file cannot be loaded ({reason.strip()})", errors.EXIT_USER_ERROR)


def config_fields() -> str:
  """The --config.FIELD flags with base.py's values, for --help (each field's comment is in base.py)."""
  from fmnist_jax import run_folder  # pylint: disable=g-import-not-at-top
  lines = [f"  --config.{name}={value!r}" for name, value in run_folder.flat(run_folder.default_config())]
  return ("The config fields with the values of experiments/base.py, where each has a comment "
          "(override with --config.FIELD=VALUE):\n" + "\n".join(lines))


def prepare_process() -> None:
  """Before any JAX work (shared with fmnist_jax.sweep): quiet logs, the runtime settings, joining the hosts."""
  quiet_library_logs()
  runtime.prepare_process(FLAGS.config.runtime)
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
  prepare_process()
  from fmnist_jax import loop  # pylint: disable=g-import-not-at-top  # After flags: keeps --help fast.
  errors.exit_on_error(lambda: loop.train_and_evaluate(FLAGS.config, FLAGS.workdir))


def run() -> None:
  """The `fmnist-train` console script."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
