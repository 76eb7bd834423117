"""Checks a config before any work starts, so a bad one costs one line, not a crashed run."""

import os
import flax.linen as nn

from fmnist_jax import errors
from fmnist_jax import runtime

DTYPES = ("float32", "bfloat16")
DATA_SOURCES = ("auto", "tfds", "idx")
TRAIN_EXAMPLES = 60_000  # Size of the Fashion-MNIST training split.


def _positive(config, name: str) -> None:
  value = config
  for part in name.split("."):
    value = value[part]
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise errors.ConfigError(f"config.{name}={value!r} must be a positive integer")


def validate(config, num_devices: int) -> None:
  """Raises ConfigError naming the first bad field and what it should be."""
  for name in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps", "eval_every_steps",
               "checkpoint_every_steps", "max_checkpoints_to_keep", "model.dense_features",
               "model.num_classes"):
    _positive(config, name)
  if not isinstance(config.num_train_steps, int) or config.num_train_steps == 0 or config.num_train_steps < -1:
    raise errors.ConfigError(f"config.num_train_steps={config.num_train_steps!r} must be -1 (derive from "
                             "num_epochs) or a positive integer")
  for name in ("conv_features", "kernel_size", "pool_size"):
    values = tuple(config.model[name])
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
      raise errors.ConfigError(f"config.model.{name}={values!r} must be a non-empty tuple of positive integers")
  if config.model.num_classes != 10:
    raise errors.ConfigError(f"config.model.num_classes={config.model.num_classes} must be 10 for Fashion-MNIST")
  if not callable(getattr(nn, str(config.model.activation), None)):
    raise errors.ConfigError(f"config.model.activation={config.model.activation!r} is not a flax.linen "
                             "activation; use e.g. 'elu', 'relu', 'gelu'")
  if config.dtype not in DTYPES:
    raise errors.ConfigError(f"config.dtype={config.dtype!r} must be one of {DTYPES}")
  check_runtime(config.runtime)
  if config.data.source not in DATA_SOURCES:
    raise errors.ConfigError(f"config.data.source={config.data.source!r} must be one of {DATA_SOURCES}")
  if config.batch_size > TRAIN_EXAMPLES:
    raise errors.ConfigError(f"config.batch_size={config.batch_size} exceeds the {TRAIN_EXAMPLES} "
                             "training images; use a smaller batch")
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % num_devices:
      raise errors.ConfigError(f"config.{name}={config[name]} is not divisible by the {num_devices} devices; "
                               f"use a multiple of {num_devices}")
  manual_dir = config.data.manual_dir
  if manual_dir is not None and not (os.path.isdir(manual_dir) and os.access(manual_dir, os.R_OK | os.X_OK)):
    raise errors.ConfigError(f"config.data.manual_dir={manual_dir!r} is not a readable folder; point it at "
                             "the folder holding the four Fashion-MNIST .gz files")


def check_runtime(rt) -> None:
  """config.runtime: the execution settings (fmnist_jax/runtime.py)."""
  for name, allowed in (("fuse_steps", runtime.FUSE_MODES), ("conv_impl", runtime.CONV_IMPLS),
                        ("pool_impl", runtime.POOL_IMPLS)):
    if rt[name] not in allowed:
      raise errors.ConfigError(f"config.runtime.{name}={rt[name]!r} must be one of {allowed}")
  if rt.cpu_ynn_fusions is not None and not set(runtime.ynn_fusions(rt)) <= set(runtime.YNN_FUSIONS):
    raise errors.ConfigError(f"config.runtime.cpu_ynn_fusions={rt.cpu_ynn_fusions!r} must be a comma list of "
                             f"{', '.join(runtime.YNN_FUSIONS)} (\"\": none)")
  if rt.deterministic and not runtime.deterministic_enabled():
    raise errors.ConfigError(f"config.runtime.deterministic=True needs XLA_FLAGS={runtime.DETERMINISTIC_XLA_FLAG} "
                             "before jax starts: train with fmnist_jax.main, or export XLA_FLAGS yourself")
