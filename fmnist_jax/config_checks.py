"""Checks a config before any work starts, so a bad one costs one line, not a crashed run."""

import os
import flax.linen as nn

from fmnist_jax import errors
from fmnist_jax import models
from fmnist_jax import optimizers
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
               "checkpoint_every_steps", "max_checkpoints_to_keep"):
    _positive(config, name)
  if not isinstance(config.num_train_steps, int) or config.num_train_steps == 0 or config.num_train_steps < -1:
    raise errors.ConfigError(f"config.num_train_steps={config.num_train_steps!r} must be -1 (derive from "
                             "num_epochs) or a positive integer")
  check_model(config)
  check_recipe(config)
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


def _positive_tuple(section, prefix: str, name: str) -> None:
  values = tuple(section[name])
  if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
    raise errors.ConfigError(f"config.{prefix}{name}={values!r} must be a non-empty tuple of positive integers")


def _in_range(section, prefix: str, name: str, low: float, high: float) -> None:
  value = section[name]
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
    raise errors.ConfigError(f"config.{prefix}{name}={value!r} must be a number in [{low}, {high}]")


def check_model(config) -> None:
  """config.model: the CNN's fields, or a ResNet's (models.resnet_config())."""
  model = config.model
  if model.get("name") not in models.MODEL_NAMES:
    raise errors.ConfigError(f"config.model.name={model.get('name')!r} must be one of {models.MODEL_NAMES}")
  if model.name == "resnet":
    for name in ("stage_features", "blocks_per_stage"):
      _positive_tuple(model, "model.", name)
    if len(model.stage_features) != len(model.blocks_per_stage):
      raise errors.ConfigError(f"config.model.blocks_per_stage={tuple(model.blocks_per_stage)!r} needs one count "
                               f"per stage of config.model.stage_features={tuple(model.stage_features)!r}")
    _positive(config, "model.stem_features")
    _in_range(model, "model.", "dropout_rate", 0.0, 0.99)
    _in_range(model, "model.", "batch_norm_momentum", 0.0, 1.0)
    if not isinstance(model.batch_norm, bool):
      raise errors.ConfigError(f"config.model.batch_norm={model.batch_norm!r} must be True or False")
  else:
    for name in ("conv_features", "kernel_size", "pool_size"):
      _positive_tuple(model, "model.", name)
    _positive(config, "model.dense_features")
  _positive(config, "model.num_classes")


def check_recipe(config) -> None:
  """The optimizer, schedule, regularizers and augmentation (all off in experiments/base.py)."""
  if config.optimizer not in optimizers.OPTIMIZERS:
    raise errors.ConfigError(f"config.optimizer={config.optimizer!r} must be one of {optimizers.OPTIMIZERS}")
  if config.schedule not in optimizers.SCHEDULES:
    raise errors.ConfigError(f"config.schedule={config.schedule!r} must be one of {optimizers.SCHEDULES}")
  for name, low, high in (("learning_rate", 0.0, float("inf")), ("weight_decay", 0.0, float("inf")),
                          ("grad_clip_norm", 0.0, float("inf")), ("momentum", 0.0, 1.0),
                          ("warmup_fraction", 0.0, 1.0), ("lr_start_factor", 0.0, 1.0),
                          ("lr_end_factor", 0.0, 1.0), ("label_smoothing", 0.0, 1.0)):
    _in_range(config, "", name, low, high)
  ema = config.ema_decay
  if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
    raise errors.ConfigError(f"config.ema_decay={config.ema_decay!r} must be a number in [0, 1) (0: no EMA)")
  if config.optimizer == "adam" and config.weight_decay:
    raise errors.ConfigError(f"config.weight_decay={config.weight_decay!r} needs config.optimizer='adamw' or 'sgd' "
                             "(adam takes no weight decay)")
  for name in ("nesterov", "eval_flip_tta"):
    if not isinstance(config[name], bool):
      raise errors.ConfigError(f"config.{name}={config[name]!r} must be True or False")
  a = config.augment
  if not isinstance(a.flip, bool):
    raise errors.ConfigError(f"config.augment.flip={a.flip!r} must be True or False")
  pixels = a.translate_pixels
  if isinstance(pixels, bool) or not isinstance(pixels, int) or not 0 <= pixels < 28:
    raise errors.ConfigError(f"config.augment.translate_pixels={a.translate_pixels!r} must be an integer in [0, 27]")
  _in_range(a, "augment.", "erase_probability", 0.0, 1.0)
  _in_range(a, "augment.", "erase_fill", 0.0, 1.0)
  for name, low, high in (("erase_area", 0.0, 1.0), ("erase_aspect", 0.0, float("inf"))):
    values = tuple(a[name])
    if len(values) != 2 or not low < values[0] <= values[1] <= high:
      raise errors.ConfigError(f"config.augment.{name}={values!r} must be (low, high) with "
                               f"{low} < low <= high <= {high}")
