"""Checks a config before any work starts, so a bad one costs one line, not a crashed run.

Imports nothing from JAX, Flax or TensorFlow: the command line checks a config before it loads them.
"""

import math
import numbers
import os
from typing import Optional

from fmnist_jax import errors
from fmnist_jax import runtime

DTYPES = ("float32", "bfloat16")
DATA_SOURCES = ("auto", "tfds", "idx")
TRAIN_EXAMPLES = 60_000  # Size of the Fashion-MNIST training split.
IMAGE_SIZE = 28  # Height and width of a Fashion-MNIST image (input_pipeline.IMAGE_SHAPE).
# The elementwise flax.linen activations config.model.activation may name (models.py looks them up there).
ACTIVATIONS = ("celu", "elu", "gelu", "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh", "leaky_relu",
               "log_sigmoid", "relu", "relu6", "selu", "sigmoid", "silu", "soft_sign", "softplus", "swish", "tanh")
MAX_LEARNING_RATE = 1.0  # Exclusive: Adam steps this large only diverge.


def _positive(config, name: str) -> None:
  value = config
  for part in name.split("."):
    value = value[part]
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise errors.ConfigError(f"config.{name}={value!r} must be a positive integer")


def _real(config, name: str) -> float:
  value = config[name]
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
    raise errors.ConfigError(f"config.{name}={value!r} must be a finite number")
  return value


def check_optimizer(config) -> None:
  """Adam's hyperparameters: outside these ranges it trains to nonsense (or NaN) without a word."""
  lr = _real(config, "learning_rate")
  if not 0 < lr < MAX_LEARNING_RATE:
    raise errors.ConfigError(f"config.learning_rate={lr!r} must be > 0 and < {MAX_LEARNING_RATE} "
                             "(the base experiment's is 0.001)")
  for name in ("b1", "b2"):
    if not 0 <= _real(config, name) < 1:
      raise errors.ConfigError(f"config.{name}={config[name]!r} must be in [0, 1) (e.g. b1=0.9, b2=0.999)")
  if not _real(config, "eps") > 0:
    raise errors.ConfigError(f"config.eps={config.eps!r} must be > 0 (e.g. 1e-8)")


def check_model(model) -> None:
  """config.model: the layer sizes, and pooling that leaves at least one pixel after every conv."""
  for name in ("conv_features", "kernel_size", "pool_size"):
    values = tuple(model[name])
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
      raise errors.ConfigError(f"config.model.{name}={values!r} must be a non-empty tuple of positive integers")
  for name in ("kernel_size", "pool_size"):
    if len(model[name]) != 2:
      raise errors.ConfigError(f"config.model.{name}={tuple(model[name])!r} must be (height, width)")
  if model.num_classes != 10:
    raise errors.ConfigError(f"config.model.num_classes={model.num_classes} must be 10 for Fashion-MNIST")
  if model.activation not in ACTIVATIONS:
    raise errors.ConfigError(f"config.model.activation={model.activation!r} is not an activation; use one of "
                             f"{', '.join(ACTIVATIONS)}")
  size = [IMAGE_SIZE, IMAGE_SIZE]
  for _ in model.conv_features:  # Each conv keeps the size (SAME); its pool divides it (stride = window).
    size = [s // p for s, p in zip(size, model.pool_size)]
  if min(size) < 1:
    raise errors.ConfigError(
        f"config.model.pool_size={tuple(model.pool_size)!r} after each of the {len(model.conv_features)} convs "
        f"leaves no pixel of the {IMAGE_SIZE}x{IMAGE_SIZE} images; use a smaller window or fewer conv_features")


def validate(config, num_devices: Optional[int] = None) -> None:
  """Raises ConfigError naming the first bad field and what it should be.

  Without `num_devices`: the checks of the config alone, for a process that has not set up
  JAX (the device count and XLA_FLAGS come later).
  """
  for name in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps", "eval_every_steps",
               "checkpoint_every_steps", "max_checkpoints_to_keep", "model.dense_features",
               "model.num_classes"):
    _positive(config, name)
  if not isinstance(config.num_train_steps, int) or config.num_train_steps == 0 or config.num_train_steps < -1:
    raise errors.ConfigError(f"config.num_train_steps={config.num_train_steps!r} must be -1 (derive from "
                             "num_epochs) or a positive integer")
  check_model(config.model)
  check_optimizer(config)
  if config.dtype not in DTYPES:
    raise errors.ConfigError(f"config.dtype={config.dtype!r} must be one of {DTYPES}")
  check_runtime(config.runtime, process=num_devices is not None)
  if config.data.source not in DATA_SOURCES:
    raise errors.ConfigError(f"config.data.source={config.data.source!r} must be one of {DATA_SOURCES}")
  if config.batch_size > TRAIN_EXAMPLES:
    raise errors.ConfigError(f"config.batch_size={config.batch_size} exceeds the {TRAIN_EXAMPLES} "
                             "training images; use a smaller batch")
  for name in ("batch_size", "eval_batch_size"):
    if num_devices is not None and config[name] % num_devices:
      raise errors.ConfigError(f"config.{name}={config[name]} is not divisible by the {num_devices} devices; "
                               f"use a multiple of {num_devices}")
  manual_dir = config.data.manual_dir
  if manual_dir is not None and not (os.path.isdir(manual_dir) and os.access(manual_dir, os.R_OK | os.X_OK)):
    raise errors.ConfigError(f"config.data.manual_dir={manual_dir!r} is not a readable folder; point it at "
                             "the folder holding the four Fashion-MNIST .gz files")


def check_runtime(rt, process: bool = True) -> None:
  """config.runtime: the execution settings (fmnist_jax/runtime.py); with `process`, also what they
  need of this process (XLA_FLAGS)."""
  for name, allowed in (("fuse_steps", runtime.FUSE_MODES), ("conv_impl", runtime.CONV_IMPLS),
                        ("pool_impl", runtime.POOL_IMPLS)):
    if rt[name] not in allowed:
      raise errors.ConfigError(f"config.runtime.{name}={rt[name]!r} must be one of {allowed}")
  if rt.cpu_ynn_fusions is not None and not set(runtime.ynn_fusions(rt)) <= set(runtime.YNN_FUSIONS):
    raise errors.ConfigError(f"config.runtime.cpu_ynn_fusions={rt.cpu_ynn_fusions!r} must be a comma list of "
                             f"{', '.join(runtime.YNN_FUSIONS)} (\"\": none)")
  if process and rt.deterministic and not runtime.deterministic_enabled():
    raise errors.ConfigError(f"config.runtime.deterministic=True needs XLA_FLAGS={runtime.DETERMINISTIC_XLA_FLAG} "
                             "before jax starts: train with fmnist_jax.main, or export XLA_FLAGS yourself")
