"""Classifies images: python scripts/predict.py IMAGE [IMAGE ...] [--workdir=W] [--top_k=K] [--json].

One image prints `Predicted class: NAME`; several print that line per image, prefixed by its path.
A file that cannot be read gets one `error:` line on stderr (or an object with "error" under --json),
the others are still classified, and the exit status is 2.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

PRETRAINED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained")

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", PRETRAINED, "A training workdir (its config.json and checkpoints/); "
                    "default: the shipped pretrained model.")
flags.DEFINE_integer("top_k", None, "Also show the K most likely classes with their probabilities.",
                     lower_bound=1)
flags.DEFINE_bool("json", False, "Print one JSON object per image and line: path, predicted_class, "
                  "class_index, probabilities (the top_k, default all, most likely first), or path and error.")


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("pass one or more image files")
  if not FLAGS["verbosity"].present:  # absl would log INFO; Orbax warns about every read-only restore.
    logging.set_verbosity(logging.ERROR)
  from fmnist_jax import CLASS_NAMES  # pylint: disable=g-import-not-at-top  # After flags: keeps --help fast.
  from fmnist_jax import errors  # pylint: disable=g-import-not-at-top
  from fmnist_jax import images  # pylint: disable=g-import-not-at-top
  loaded, failed = {}, {}
  for i, path in enumerate(paths):
    try:
      loaded[i] = images.load_image(path)
    except errors.ImageError as e:
      failed[i] = str(e)
  if loaded:
    from fmnist_jax import predict  # pylint: disable=g-import-not-at-top  # Imports JAX: only when needed.
    try:
      probabilities = dict(zip(loaded, predict.Predictor(FLAGS.workdir).probabilities(list(loaded.values()))))
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
    top = predict.top_k(probabilities[i], k)
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


if __name__ == "__main__":
  app.run(main)
