"""Checks a config before any work starts, so a bad one costs one line, not a crashed run.

Runs before a JAX backend starts or TensorFlow loads (the command lines call it first).
"""

import math
import numbers
import os
from typing import Optional

import fmnist_jax
from fmnist_jax import errors
from fmnist_jax import model_families
from fmnist_jax import runtime

DTYPES = ("float32", "bfloat16")
DATA_SOURCES = ("auto", "tfds", "idx")
# The elementwise flax.linen activations config.model.activation may name (models.py looks them up there).
ACTIVATIONS = ("celu", "elu", "gelu", "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh", "leaky_relu",
               "log_sigmoid", "relu", "relu6", "selu", "sigmoid", "silu", "soft_sign", "softplus", "swish", "tanh")
MAX_LEARNING_RATE = 1.0  # Exclusive: Adam steps this large only diverge.
MODEL_NAMES = model_families.NAMES  # config.model.name: the seed's CNN, or model_families.resnet_config()'s family.
# config.optimizer (fmnist_jax/optimizers.py) -> the config fields that become arrays in its optimizer
# state. The one declaration: members of a sweep may differ in them (train.VMAPPED_FIELDS) and a
# resume may change them (run_folder.RESUME_SAFE), both derived from it.
OPTIMIZER_HYPERPARAMS = {
    "adam": ("learning_rate", "b1", "b2", "eps"),
    "adamw": ("learning_rate", "b1", "b2", "eps", "weight_decay"),
    "sgd": ("learning_rate", "momentum", "weight_decay"),
    "muon": ("learning_rate", "adam_learning_rate", "momentum", "b1", "b2", "eps", "weight_decay"),
}
OPTIMIZERS = tuple(OPTIMIZER_HYPERPARAMS)
HYPERPARAM_FIELDS = tuple(dict.fromkeys(name for names in OPTIMIZER_HYPERPARAMS.values() for name in names))
SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "one_cycle")  # config.schedule.
# The fields that take one of a few values (--help lists them).
ENUMERATED_FIELDS = {"data.source": DATA_SOURCES, "model.name": MODEL_NAMES, "model.activation": ACTIVATIONS,
                     "dtype": DTYPES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
                     "runtime.fuse_steps": runtime.FUSE_MODES, "runtime.conv_impl": runtime.CONV_IMPLS,
                     "runtime.stem_impl": runtime.STEM_IMPLS, "runtime.pool_impl": runtime.POOL_IMPLS}


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
  for name in ("learning_rate", "adam_learning_rate"):
    lr = _real(config, name)
    if not 0 < lr < MAX_LEARNING_RATE:
      raise errors.ConfigError(f"config.{name}={lr!r} must be > 0 and < {MAX_LEARNING_RATE} "
                               "(the base experiment's is 0.001)")
  for name in ("b1", "b2"):
    if not 0 <= _real(config, name) < 1:
      raise errors.ConfigError(f"config.{name}={config[name]!r} must be in [0, 1) (e.g. b1=0.9, b2=0.999)")
  if not _real(config, "eps") > 0:
    raise errors.ConfigError(f"config.eps={config.eps!r} must be > 0 (e.g. 1e-8)")


def check_model(config) -> None:
  """config.model: the CNN's fields, or a ResNet's (model_families.resnet_config()); pooling must leave a pixel."""
  model = config.model
  if model.get("name") not in MODEL_NAMES:
    raise errors.ConfigError(f"config.model.name={model.get('name')!r} must be one of {MODEL_NAMES}")
  expected = model_families.fields(model.name)
  if set(model.keys()) != set(expected):
    unknown = sorted(set(model.keys()) - set(expected)) or sorted(set(expected) - set(model.keys()))
    raise errors.ConfigError(
        f"config.model.name={model.name!r} but config.model holds {', '.join(unknown)} "
        f"({'not ' if set(unknown) - set(expected) else 'missing from '}its fields); switch families with "
        f"--config.model.name={model.name} (the section is rebuilt) or assign model_families.{model.name}_config()")
  if model.num_classes != 10:
    raise errors.ConfigError(f"config.model.num_classes={model.num_classes} must be 10 for Fashion-MNIST")
  if model.activation not in ACTIVATIONS:
    raise errors.ConfigError(f"config.model.activation={model.activation!r} is not an activation; use one of "
                             f"{', '.join(ACTIVATIONS)}")
  if model.name == "resnet":
    for name in ("stage_features", "blocks_per_stage", "stage_strides"):
      _positive_tuple(model, "model.", name)
    for name, what in (("blocks_per_stage", "count"), ("stage_strides", "stride")):
      if len(model.stage_features) != len(model[name]):
        raise errors.ConfigError(f"config.model.{name}={tuple(model[name])!r} needs one {what} "
                                 f"per stage of config.model.stage_features={tuple(model.stage_features)!r}")
    _positive(config, "model.stem_features")
    _in_range(model, "model.", "dropout_rate", 0.0, 0.99)
    _in_range(model, "model.", "batch_norm_momentum", 0.0, 1.0, high_open=True)  # 1: statistics never move.
    if not isinstance(model.batch_norm, bool):
      raise errors.ConfigError(f"config.model.batch_norm={model.batch_norm!r} must be True or False")
    return
  for name in ("conv_features", "kernel_size", "pool_size"):
    _positive_tuple(model, "model.", name)
  for name in ("kernel_size", "pool_size"):
    if len(model[name]) != 2:
      raise errors.ConfigError(f"config.model.{name}={tuple(model[name])!r} must be (height, width)")
  dense = model.dense_features
  if isinstance(dense, bool) or not isinstance(dense, int) or dense < 0:
    raise errors.ConfigError(f"config.model.dense_features={dense!r} must be a non-negative integer "
                             "(0: no hidden layer)")
  for name in ("batch_norm", "batch_norm_scale"):
    if not isinstance(model[name], bool):
      raise errors.ConfigError(f"config.model.{name}={model[name]!r} must be True or False")
  _in_range(model, "model.", "batch_norm_momentum", 0.0, 1.0, high_open=True)
  _positive(config, "model.convs_per_stage")
  whiten = model.whiten_kernel_size
  if isinstance(whiten, bool) or not isinstance(whiten, int) or not 0 <= whiten <= min(fmnist_jax.IMAGE_SHAPE[:2]):
    raise errors.ConfigError(f"config.model.whiten_kernel_size={whiten!r} must be 0 (no whitening stem) or a "
                             "patch size such as 2 or 3")
  eps = model.whiten_eps
  if not (_is_number(eps) and math.isfinite(eps) and eps > 0):
    raise errors.ConfigError(f"config.model.whiten_eps={eps!r} must be > 0 (e.g. 5e-4): it keeps the "
                             "filters' 1/sqrt(eigenvalue) finite")
  directions, patch_size = model.whiten_directions, whiten * whiten * fmnist_jax.IMAGE_SHAPE[2]
  if isinstance(directions, bool) or not isinstance(directions, int) or not 0 <= directions <= max(patch_size, 1):
    raise errors.ConfigError(f"config.model.whiten_directions={directions!r} must be 0 (all) or between 1 and "
                             f"the {max(patch_size, 1)} directions of a whitening stem's patch")
  size = [s - max(whiten - 1, 0) for s in fmnist_jax.IMAGE_SHAPE[:2]]  # A whitening stem is a VALID conv.
  for _ in model.conv_features:  # Each conv keeps the size (SAME); its pool divides it (stride = window).
    size = [s // p for s, p in zip(size, model.pool_size)]
  if min(size) < 1:
    raise errors.ConfigError(
        f"config.model.pool_size={tuple(model.pool_size)!r} after each of the {len(model.conv_features)} convs "
        f"leaves no pixel of the {'x'.join(map(str, fmnist_jax.IMAGE_SHAPE[:2]))} images; use a smaller "
        "window or fewer conv_features")


def validate(config, num_devices: Optional[int] = None) -> None:
  """Raises ConfigError naming the first bad field and what it should be.

  Without `num_devices`: the checks of the config alone, for a process that has not set up
  JAX (the device count and XLA_FLAGS come later).
  """
  for name in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps", "eval_every_steps",
               "checkpoint_every_steps", "max_checkpoints_to_keep"):
    _positive(config, name)
  if not isinstance(config.num_train_steps, int) or config.num_train_steps == 0 or config.num_train_steps < -1:
    raise errors.ConfigError(f"config.num_train_steps={config.num_train_steps!r} must be -1 (derive from "
                             "num_epochs) or a positive integer")
  check_model(config)
  check_optimizer(config)
  check_recipe(config)
  if config.dtype not in DTYPES:
    raise errors.ConfigError(f"config.dtype={config.dtype!r} must be one of {DTYPES}")
  check_runtime(config.runtime, process=num_devices is not None)
  if config.data.source not in DATA_SOURCES:
    raise errors.ConfigError(f"config.data.source={config.data.source!r} must be one of {DATA_SOURCES}")
  if config.batch_size > fmnist_jax.SPLIT_SIZES["train"]:
    raise errors.ConfigError(f"config.batch_size={config.batch_size} exceeds the "
                             f"{fmnist_jax.SPLIT_SIZES['train']} "
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
                        ("stem_impl", runtime.STEM_IMPLS), ("pool_impl", runtime.POOL_IMPLS)):
    if rt[name] not in allowed:
      raise errors.ConfigError(f"config.runtime.{name}={rt[name]!r} must be one of {allowed}")
  if rt.cpu_ynn_fusions is not None and not set(runtime.ynn_fusions(rt)) <= set(runtime.YNN_FUSIONS):
    raise errors.ConfigError(f"config.runtime.cpu_ynn_fusions={rt.cpu_ynn_fusions!r} must be a comma list of "
                             f"{', '.join(runtime.YNN_FUSIONS)} (\"\": none)")
  if rt.profile_steps is not None:
    steps = tuple(rt.profile_steps)
    whole = all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
    if len(steps) != 2 or not whole or not 0 <= steps[0] < steps[1]:
      raise errors.ConfigError(f"config.runtime.profile_steps={rt.profile_steps!r} must be (start, stop) with "
                               "0 <= start < stop, e.g. (10, 15), or None")
  for name in ("distributed_init_timeout_s", "distributed_heartbeat_timeout_s"):
    if isinstance(rt[name], bool) or not isinstance(rt[name], int) or rt[name] <= 0:
      raise errors.ConfigError(f"config.runtime.{name}={rt[name]!r} must be a positive integer (seconds)")
  if process and rt.deterministic and not runtime.deterministic_enabled():
    raise errors.ConfigError(f"config.runtime.deterministic=True needs XLA_FLAGS={runtime.DETERMINISTIC_XLA_FLAG} "
                             "before jax starts: train with fmnist_jax.main, or export XLA_FLAGS yourself")


def _positive_tuple(section, prefix: str, name: str) -> None:
  values = tuple(section[name])
  if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
    raise errors.ConfigError(f"config.{prefix}{name}={values!r} must be a non-empty tuple of positive integers")


def _in_range(section, prefix: str, name: str, low: float, high: float, high_open: bool = False) -> None:
  """`value` in [low, high], or [low, high) with `high_open` (where `high` is degenerate: uniform
  targets, momentum that never forgets); an infinite `high` means any finite number from `low`."""
  value = section[name]
  inside = _is_number(value) and math.isfinite(value) and low <= value and (
      value < high if high_open else value <= high)
  if not inside:
    span = f"a finite number >= {low}" if math.isinf(high) else f"a number in [{low}, {high}{')' if high_open else ']'}"
    raise errors.ConfigError(f"config.{prefix}{name}={value!r} must be {span}")


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shift_pixels(section, prefix: str, name: str) -> None:
  """A shift of a 28x28 image: a whole number of pixels that leaves part of it (0: no shift)."""
  value = section[name]
  if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 28:
    raise errors.ConfigError(f"config.{prefix}{name}={value!r} must be an integer in [0, 27] (0: no shift)")


def check_recipe(config) -> None:
  """The optimizer, schedule, regularizers and augmentation (all off in experiments/base.py)."""
  if config.optimizer not in OPTIMIZERS:
    raise errors.ConfigError(f"config.optimizer={config.optimizer!r} must be one of {OPTIMIZERS}")
  if config.schedule not in SCHEDULES:
    raise errors.ConfigError(f"config.schedule={config.schedule!r} must be one of {SCHEDULES}")
  for name, low, high, high_open in (
      ("weight_decay", 0.0, math.inf, False), ("grad_clip_norm", 0.0, math.inf, False),
      ("momentum", 0.0, 1.0, True),  # 1: the velocity never forgets.
      ("warmup_fraction", 0.0, 1.0, False), ("lr_start_factor", 0.0, 1.0, False),
      ("lr_end_factor", 0.0, 1.0, False), ("label_smoothing", 0.0, 1.0, True)):  # 1: uniform targets.
    _in_range(config, "", name, low, high, high_open)
  ema = config.ema_decay
  if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
    raise errors.ConfigError(f"config.ema_decay={config.ema_decay!r} must be a number in [0, 1) (0: no EMA)")
  if config.optimizer == "adam" and config.weight_decay:
    raise errors.ConfigError(f"config.weight_decay={config.weight_decay!r} needs config.optimizer='adamw', 'sgd' "
                             "or 'muon' (adam takes no weight decay)")
  for name in ("nesterov", "eval_flip_tta"):
    if not isinstance(config[name], bool):
      raise errors.ConfigError(f"config.{name}={config[name]!r} must be True or False")
  a = config.augment
  if not isinstance(a.flip, bool):
    raise errors.ConfigError(f"config.augment.flip={a.flip!r} must be True or False")
  if not isinstance(a.alternate_flip, bool):
    raise errors.ConfigError(f"config.augment.alternate_flip={a.alternate_flip!r} must be True or False")
  if a.flip and a.alternate_flip:
    raise errors.ConfigError("config.augment.alternate_flip=True replaces the random mirror: set "
                             "config.augment.flip=False")
  _shift_pixels(a, "augment.", "translate_pixels")
  _shift_pixels(config, "", "eval_tta_shift_pixels")
  _in_range(a, "augment.", "erase_probability", 0.0, 1.0)
  _in_range(a, "augment.", "erase_fill", 0.0, 1.0)
  for name, low, high in (("erase_area", 0.0, 1.0), ("erase_aspect", 0.0, float("inf"))):
    values = tuple(a[name]) if isinstance(a[name], (tuple, list)) else (a[name],)
    if len(values) != 2 or not all(_is_number(v) for v in values) or not low < values[0] <= values[1] <= high:
      raise errors.ConfigError(f"config.augment.{name}={values!r} must be (low, high) with "
                               f"{low} < low <= high <= {high}")
