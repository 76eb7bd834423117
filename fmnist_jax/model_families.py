"""The model families config.model may hold, each with its own fields and their defaults.

Jax-free (config_checks and the command lines use it before JAX loads). A section holds exactly the
fields of one family: "cnn" (experiments/base.py's model section, the seed's CNN) or "resnet"
(`resnet_config()`). `switch` rebuilds a section for another family, so that
`--config.model.name=resnet` on a CNN config (or a sweep point setting `model.name`) gets the ResNet's
fields with their defaults, plus the fields the user set for it.
"""

from typing import Any, Dict, Optional

import ml_collections

from fmnist_jax import errors


def resnet_config() -> ml_collections.ConfigDict:
  """`config.model` of a ResNet (assign it whole: a resnet's section holds none of the CNN's fields)."""
  m = ml_collections.ConfigDict()
  m.name = "resnet"  # Model family: "cnn" (the seed's) or "resnet".
  m.stem_features = 16  # Output channels of the first 3x3 convolution.
  m.stage_features = (16, 32, 64)  # Channels of each stage.
  m.blocks_per_stage = (2, 2, 2)  # Residual blocks in each stage (WRN-d-k: (d - 4) / 6 each, widths 16k, 32k, 64k).
  m.stage_strides = (1, 2, 2)  # Stride of each stage's first block: 1 keeps the resolution, 2 halves it.
  m.batch_norm = True  # BatchNorm before each activation (its statistics are model state, checkpointed).
  m.batch_norm_momentum = 0.9  # Running statistics: new = momentum * old + (1 - momentum) * batch's.
  m.dropout_rate = 0.0  # Dropout between the two convolutions of each block (0: none).
  m.activation = "relu"  # Nonlinearity (any flax.linen activation name).
  m.num_classes = 10  # Output logits.
  return m


def cnn_config() -> ml_collections.ConfigDict:
  """`config.model` of the seed's CNN: experiments/base.py's section, where each field has its comment."""
  from fmnist_jax.experiments import base  # pylint: disable=g-import-not-at-top
  return base.get_config().model


FAMILIES = {"cnn": cnn_config, "resnet": resnet_config}  # config.model.name -> its section's defaults.
NAMES = tuple(FAMILIES)


def defaults(name: str) -> ml_collections.ConfigDict:
  return FAMILIES[name]()


def fields(name: str) -> tuple:
  return tuple(defaults(name).keys())


def family_of(section) -> Optional[str]:
  """The family whose fields `section` holds (whatever its `name` says), or None."""
  keys = set(section.keys())
  for name in NAMES:
    if keys == set(fields(name)):
      return name
  return None


def check_fields(name: str, names, where: str = "--config") -> None:
  """ConfigError in one line for the first of `names` that family `name` has no field of."""
  own = fields(name)
  for field in names:
    if field not in own:
      owners = [n for n in NAMES if field in fields(n)]
      hint = f" (a field of model.name={owners[0]!r})" if owners else ""
      raise errors.ConfigError(f"{where}: config.model.{field} is not a field of model.name={name!r}{hint}; "
                               f"its fields: {', '.join(k for k in own if k != 'name')}")


def switch(config, name: str, overrides: Dict[str, Any], where: str = "--config") -> None:
  """Makes config.model a `name` section: that family's defaults, then `overrides` ({field: value} the
  user set for it). A field the family does not have is a ConfigError in one line."""
  check_fields(name, overrides, where)
  section = defaults(name)
  for field, value in overrides.items():
    try:
      setattr(section, field, value)
    except (TypeError, ValueError) as e:
      raise errors.ConfigError(f"{where}: config.model.{field}={value!r} does not fit ({e})") from e
  locked = config.is_locked
  if locked:
    config.unlock()
  config.model = section
  if locked:
    config.lock()
