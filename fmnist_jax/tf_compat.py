"""TensorFlow is optional (accelerator hosts lack it); when present it must stay off the GPUs."""

import functools
import importlib.util
import os


def tensorflow_available() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


@functools.cache
def import_tensorflow():
  """Imports TF with every GPU hidden from it, so it cannot take memory JAX needs, and its C++ INFO
  notices (oneDNN, absl's "before InitializeLog") silenced unless TF_CPP_MIN_LOG_LEVEL says otherwise."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  return tf
