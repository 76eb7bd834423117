"""A run's folder: its config.json, read back with today's defaults for fields it predates.

Layout of a workdir: config.json (the resolved config), checkpoints/ (Orbax), train/ and eval/
(TensorBoard event files). The defaults come from the base experiment installed with the package
(`fmnist_jax.experiments`, the repository's experiments/ folder), never from a path beside it.
"""

import json
import os
from typing import Any, Dict

import ml_collections

from fmnist_jax import errors
from fmnist_jax import runtime

CONFIG_FILE = "config.json"


def config_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_FILE)


def default_config() -> ml_collections.ConfigDict:
  """experiments/base.py, the one place every field's default lives."""
  from fmnist_jax.experiments import base  # pylint: disable=g-import-not-at-top
  return base.get_config()


def save_config(config, workdir: str) -> None:
  """Writes a temporary file and renames it: a kill mid-write cannot leave a truncated config."""
  path = config_path(workdir)
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)


def _merged(defaults: Dict[str, Any], saved: Dict[str, Any]) -> Dict[str, Any]:
  """`saved` over `defaults`, nested dicts merged key by key."""
  out = dict(defaults)
  for key, value in saved.items():
    out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
  return out


def upgrade(saved: Dict[str, Any]) -> Dict[str, Any]:
  """A saved config dict in today's layout: runs saved before config.runtime had its fields at the top."""
  saved = dict(saved)
  moved = {name: saved.pop(name) for name in runtime.FIELDS if name in saved}
  if moved:
    saved["runtime"] = {**moved, **saved.get("runtime", {})}
  return saved


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's saved config; fields added to the project after the run was saved take base.py's defaults."""
  path = config_path(workdir)
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError as e:
    raise errors.CheckpointError(f"{path} not found; --workdir must be a folder written by training") from e
  except (OSError, ValueError) as e:
    raise errors.CheckpointError(f"{path} is unreadable ({e}); restore it from the run's config") from e
  if not isinstance(saved, dict):
    raise errors.CheckpointError(f"{path} is not a config (a JSON object expected); restore it from the run's config")
  defaults = json.loads(default_config().to_json_best_effort())
  saved = upgrade(saved)
  if saved.get("model", {}).get("name", "cnn") == "resnet":  # Its defaults are a resnet's, not base.py's CNN.
    from fmnist_jax import models  # pylint: disable=g-import-not-at-top
    defaults["model"] = json.loads(models.resnet_config().to_json_best_effort())
  return ml_collections.ConfigDict(_merged(defaults, saved))


def check_same_model(config, workdir: str) -> None:
  """A workdir trained with other model shapes cannot resume under this config."""
  if not os.path.exists(config_path(workdir)):
    return
  saved = load_config(workdir).model.to_dict()
  current = json.loads(config.model.to_json_best_effort())
  if saved != current:
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    raise errors.CheckpointError(
        f"{workdir} was trained with a different model ({', '.join(f'model.{k}={saved.get(k)}' for k in diff)}); "
        "use that config or a new --workdir")


def check_workdir(workdir: str) -> None:
  """The workdir must be creatable and writable before training starts."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"--workdir={workdir}: cannot create it ({e.strerror}); choose a writable folder") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise errors.ConfigError(f"--workdir={workdir} is not writable; choose a writable folder")
