"""TensorFlow is optional (accelerator hosts lack it); when present it must stay off the GPUs."""

import functools
import importlib.util


def tensorflow_available() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


@functools.cache
def import_tensorflow():
  """Imports TF with every GPU hidden from it, so it cannot take memory JAX needs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  return tf
