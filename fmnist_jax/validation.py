"""Checks a config before any work starts, so a bad one costs one line, not a crashed run."""

import os
from typing import List

import flax.linen as nn

from fmnist_jax import determinism
from fmnist_jax import errors

DTYPES = ("float32", "bfloat16")
CONV_IMPLS = ("auto", "xla", "im2col")
POOL_IMPLS = ("auto", "xla", "slices")
YNN_FUSIONS = ("dot", "eltwise", "reduce", "individual_dot", "individual_convolution")  # XLA's LibraryFusionType names.
FUSE_MODES = ("auto", "on", "off")
DATA_SOURCES = ("auto", "tfds", "idx")
TRAIN_EXAMPLES = 60_000  # Size of the Fashion-MNIST training split.


def _positive(config, name: str) -> None:
  value = config
  for part in name.split("."):
    value = value[part]
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise errors.ConfigError(f"config.{name}={value!r} must be a positive integer")


def cpu_ynn_fusions(config) -> List[str]:
  """The names in config.cpu_ynn_fusions ("dot,reduce" -> ["dot", "reduce"]; "" -> [])."""
  return [name for name in config.cpu_ynn_fusions.split(",") if name]


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
  if config.conv_impl not in CONV_IMPLS:
    raise errors.ConfigError(f"config.conv_impl={config.conv_impl!r} must be one of {CONV_IMPLS}")
  if config.pool_impl not in POOL_IMPLS:
    raise errors.ConfigError(f"config.pool_impl={config.pool_impl!r} must be one of {POOL_IMPLS}")
  if config.cpu_ynn_fusions is not None and not set(cpu_ynn_fusions(config)) <= set(YNN_FUSIONS):
    raise errors.ConfigError(f"config.cpu_ynn_fusions={config.cpu_ynn_fusions!r} must be a comma list of "
                             f"{', '.join(YNN_FUSIONS)} (\"\": none)")
  if config.deterministic and not determinism.enabled():
    raise errors.ConfigError(f"config.deterministic=True needs XLA_FLAGS={determinism.XLA_FLAG} before jax "
                             "starts: train with fmnist_jax.main, or export XLA_FLAGS yourself")
  if config.fuse_steps not in FUSE_MODES:
    raise errors.ConfigError(f"config.fuse_steps={config.fuse_steps!r} must be one of {FUSE_MODES}")
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


def check_workdir(workdir: str) -> None:
  """The workdir must be creatable and writable before training starts."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"--workdir={workdir}: cannot create it ({e.strerror}); choose a writable folder") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise errors.ConfigError(f"--workdir={workdir} is not writable; choose a writable folder")
