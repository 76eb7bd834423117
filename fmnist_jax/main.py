"""Command line: python -m fmnist_jax.main --config=experiments/base.py --workdir=runs/x [--config.F=V]."""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fmnist_jax import errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, event files and the resolved config.")
flags.mark_flags_as_required(["config", "workdir"])


def quiet_library_logs() -> None:
  """Orbax logs every save step at INFO through absl; keep its warnings, drop the chatter."""
  logging.get_absl_logger().addFilter(
      lambda record: record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE")
  quiet_library_logs()
  from fmnist_jax import train  # pylint: disable=g-import-not-at-top  # After flags: keeps --help fast.
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.UserError as e:
    _fail(str(e), errors.EXIT_USER_ERROR)
  except errors.NonFiniteLossError as e:
    _fail(str(e), errors.EXIT_NON_FINITE)
  except errors.Interrupted as e:
    _fail(str(e), errors.EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> None:
  logging.flush()
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


if __name__ == "__main__":
  app.run(main)
