"""A run's folder: its one writer, its config.json (read back with today's defaults for fields it
predates).

Layout of a workdir: config.json (the resolved config), checkpoints/ (Orbax), train/ and eval/
(TensorBoard event files), lock (held by the process training in it). The defaults come from the
base experiment installed with the package (`fmnist_jax.experiments`, the repository's
experiments/ folder), never from a path beside it.
"""

import contextlib
import fcntl
import json
import os
from typing import Any, Dict, Iterator

import ml_collections

from fmnist_jax import errors
from fmnist_jax import runtime

CONFIG_FILE = "config.json"
LOCK_FILE = "lock"  # flock'ed by the one process writing the folder; holds that process's PID.
_held: Dict[str, list] = {}  # Lock path -> [open file, depth]: this process's own locks, taken again freely.


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
  return ml_collections.ConfigDict(_merged(defaults, upgrade(saved)))


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


@contextlib.contextmanager
def owned(config, workdir: str) -> Iterator[None]:
  """Makes this process the one writer of `workdir` while the block runs, after checking that
  `config` may train there. Readers (predict, evaluate, plot) never take it.

  An advisory flock on <workdir>/lock, which the OS releases when the process ends however it ends
  (kill -9 leaves nothing stale). A second writer gets a ConfigError naming the holder and writes
  nothing. The same process may enter it again (a sweep holds its points while each trains).
  """
  check_workdir(workdir)
  path = os.path.realpath(os.path.join(workdir, LOCK_FILE))
  if path not in _held:
    lock = open(path, "a+")  # pylint: disable=consider-using-with  # Held until the block ends.
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock.seek(0)
      holder = lock.read().strip()
      lock.close()
      raise errors.ConfigError(
          f"--workdir={workdir} is being trained by process {holder or '(starting)'} (it holds {path}); "
          "wait for it to end, stop it, or choose another --workdir") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    _held[path] = [lock, 0]
  _held[path][1] += 1
  try:
    check_same_model(config, workdir)
    yield
  finally:
    _held[path][1] -= 1
    if not _held[path][1]:
      _held.pop(path)[0].close()  # Closing the file releases the lock; the file stays.


def check_workdir(workdir: str) -> None:
  """The workdir must be creatable and writable before training starts."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"--workdir={workdir}: cannot create it ({e.strerror}); choose a writable folder") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise errors.ConfigError(f"--workdir={workdir} is not writable; choose a writable folder")
