"""Classifies images with a trained model: python -m fmnist_jax.predict IMAGE [IMAGE ...]
[--workdir=W] [--top_k=K] [--json] (also `fmnist-predict`, and scripts/predict.py in a checkout).

One image prints `Predicted class: NAME`; several print that line per image, prefixed by its path.
A file that cannot be read gets one `error:` line on stderr (or an object with "error" under --json),
the others are still classified, and the exit status is 2. Without --workdir the shipped model
(package data `fmnist_jax.pretrained`, the repository's pretrained/ folder) is used.

The model is built from the workdir's saved config, so any trained model predicts without flags,
as evaluation during training did (EMA parameters, BatchNorm statistics, flip TTA as configured);
the optimizer state is never read (a shipped model may omit it).
Batches are padded to a power of two (at most the config's eval_batch_size, larger inputs go in
chunks of it), so a process compiles once per bucket, not once per distinct batch size.
"""

import importlib.resources
import json
import os
import sys
from typing import Tuple

from absl import flags
from absl import logging
import jax
import numpy as np

from fmnist_jax import checkpoints
from fmnist_jax import CLASS_NAMES
from fmnist_jax import cli
from fmnist_jax import errors
from fmnist_jax import images as images_lib
from fmnist_jax import inference


class Predictor:
  """Class probabilities from the newest restorable checkpoint of a workdir."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    if not os.path.isdir(self.workdir):
      raise errors.CheckpointError(f"--workdir={workdir} is not a folder; point it at a trained run "
                                   "(or leave it out for the shipped model)")
    restored = checkpoints.restore_for_inference(self.workdir)
    self.config, self.step, self.params = restored.config, restored.step, restored.params
    self.skipped = restored.skipped  # The newer steps that did not restore, each "step N: reason".
    self.variables = restored.variables
    self.max_batch = int(self.config.eval_batch_size)
    apply_fn, tta = restored.apply_fn, restored.tta
    self._probabilities = jax.jit(
        lambda variables, x: jax.nn.softmax(inference.inference_logits(apply_fn, variables, x, tta)))

  def bucket(self, n: int) -> int:
    """The padded batch size for n images: the next power of two, capped at max_batch."""
    return min(1 << max(n - 1, 0).bit_length(), self.max_batch)

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """float32 [N, 28, 28, 1] in [0, 1] → float32 [N, 10]; one compiled call per chunk of max_batch."""
    images = np.asarray(images, np.float32)
    out = []
    for start in range(0, len(images), self.max_batch):
      chunk = images[start:start + self.max_batch]
      padded = np.zeros((self.bucket(len(chunk)),) + chunk.shape[1:], np.float32)
      padded[:len(chunk)] = chunk
      out.append(np.asarray(self._probabilities(self.variables, padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def top_k(probabilities: np.ndarray, k: int) -> Tuple[Tuple[str, float], ...]:
  """The k most likely (class name, probability) of one image, most likely first."""
  order = np.argsort(-probabilities, kind="stable")[:k]
  return tuple((CLASS_NAMES[i], float(probabilities[i])) for i in order)


def pretrained_dir() -> str:
  """The shipped model's workdir, installed with the package."""
  return str(importlib.resources.files("fmnist_jax.pretrained"))


# --- Command line ---------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only as a program: importing this module must not claim flag names."""
  cli.define_workdir("A training workdir (its config.json and checkpoints/); default: the shipped pretrained "
                     "model.")
  flags.DEFINE_integer("top_k", None, "Also show the K most likely classes with their probabilities "
                       f"(at most {len(CLASS_NAMES)}, the number of classes).", lower_bound=1,
                       upper_bound=len(CLASS_NAMES))
  flags.DEFINE_bool("json", False, "Print one JSON object per image and line: path, predicted_class, "
                    "class_index, probabilities (the top_k, default all, most likely first), or path and error.")


def main(argv):
  paths = argv[1:]
  if not paths:
    errors.fail("no image given; pass one or more image files: python -m fmnist_jax.predict IMAGE [IMAGE ...]",
                errors.EXIT_USER_ERROR)
  if not FLAGS["verbosity"].present:  # absl would log INFO; Orbax warns about every read-only restore.
    logging.set_verbosity(logging.ERROR)
  loaded, failed = {}, {}
  for i, path in enumerate(paths):
    try:
      loaded[i] = images_lib.load_image(path)
    except errors.ImageError as e:
      failed[i] = str(e)
  if loaded:
    try:
      predictor = Predictor(FLAGS.workdir or pretrained_dir())
      if predictor.skipped:
        print(f"warning: {predictor.workdir}: {'; '.join(predictor.skipped)}; predicting with the newest step that "
              f"restores, step {predictor.step}", file=sys.stderr, flush=True)
      probabilities = dict(zip(loaded, predictor.probabilities(list(loaded.values()))))
    except errors.UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      os._exit(errors.EXIT_USER_ERROR)  # pylint: disable=protected-access  # Skips teardown, where
      # the reads Orbax abandons after a failed restore print tracebacks; nothing needs cleaning up.
  k = FLAGS.top_k or len(CLASS_NAMES)
  for i, path in enumerate(paths):
    if i in failed:
      if FLAGS.json:
        print(json.dumps({"path": path, "error": failed[i]}))
      else:
        print(f"error: {failed[i]}", file=sys.stderr)
      continue
    top = top_k(probabilities[i], k)
    if FLAGS.json:
      print(json.dumps({"path": path, "predicted_class": top[0][0], "class_index": CLASS_NAMES.index(top[0][0]),
                        "probabilities": dict(top)}))
      continue
    line = f"Predicted class: {top[0][0]}"
    if FLAGS.top_k:
      line += " (" + ", ".join(f"{name} {p:.3f}" for name, p in top) + ")"
    print(line if len(paths) == 1 else f"{path}: {line}")
  if failed:
    sys.exit(errors.EXIT_USER_ERROR)


def run() -> None:
  """The `fmnist-predict` console script."""
  define_flags()
  cli.run_app(main, cli.parse_flags_and_paths, help_modules=[__name__])


if __name__ == "__main__":
  run()
