"""Training speed as one JSON line: python scripts/benchmark.py --config=experiments/base.py
[--steps=N] [--compare=torch] [--config.FIELD=VALUE ...]."""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).",
                                lock_config=True)
flags.DEFINE_integer("steps", None, "Timed training steps after the warm-up step (default: one epoch).")
flags.DEFINE_enum("compare", None, ["torch"], "Also train the PyTorch reference in the same run.")
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE")
  from fmnist_jax import host_memory  # pylint: disable=g-import-not-at-top  # After flags: keeps --help fast.
  host_memory.configure(FLAGS.config)  # Before any JAX work; PyTorch in the same process gets it too.
  from fmnist_jax import benchmark  # pylint: disable=g-import-not-at-top
  from fmnist_jax import errors  # pylint: disable=g-import-not-at-top
  print(json.dumps(errors.exit_on_error(lambda: benchmark.run(FLAGS.config, FLAGS.steps, FLAGS.compare))))


if __name__ == "__main__":
  app.run(main)
