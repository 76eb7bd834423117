"""Training curves of a run or a sweep folder as PNGs, and their final numbers (mean ± std over a sweep):
python -m fmnist_jax.plot --workdir=W [--out=DIR] (also `fmnist-plot`, and scripts/plot.py in a checkout)."""

import logging
import os
import sys
import types

from absl import flags

from fmnist_jax import cli

# TensorBoard reads event files with its TF-free stub once this module exists; importing TensorFlow
# (when installed) would only add seconds.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
logging.getLogger("tensorboard").setLevel(logging.WARNING)  # Its reader logs each file it polls.

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only as a program: importing this module must not claim flag names."""
  cli.define_workdir("A training workdir, or a folder of workdirs (a sweep) to overlay.", required=True)
  flags.DEFINE_string("out", None, "Folder for the PNGs (default: <workdir>/plots).")
  flags.DEFINE_list("metrics", None, "Logged metrics to plot, one PNG each (default: loss, accuracy, precision).")


def main(argv):
  del argv  # cli.parse_flags refused positional arguments.
  from fmnist_jax import plotting  # pylint: disable=g-import-not-at-top
  out = FLAGS.out or os.path.join(FLAGS.workdir, "plots")
  cli.check_output_folder("--out", out)
  metrics = FLAGS.metrics or plotting.CURVE_METRICS
  runs = plotting.load_runs(FLAGS.workdir)
  paths = plotting.write_curves(runs, out, metrics)
  rows = plotting.final_table(runs, metrics)
  paths.append(plotting.write_final_table(rows, os.path.join(out, "final.csv")))
  print(plotting.format_final_table(rows))
  print(f"{len(runs)} run(s) plotted:", *paths, sep="\n  ")


def run() -> None:
  """The `fmnist-plot` console script."""
  define_flags()
  cli.run_app(main, help_modules=[__name__])


if __name__ == "__main__":
  run()
