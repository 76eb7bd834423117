"""A run's folder: its one writer, its config.json (read back with today's defaults for fields it
predates).

Layout of a workdir: config.json (the config of the latest start), history.jsonl (every start and
resume), checkpoints/ (Orbax), train/ and eval/ (TensorBoard event files), lock (held by the
process training in it). A resume may change only the RESUME_SAFE fields. The defaults come from the
base experiment installed with the package (`fmnist_jax.experiments`, the repository's
experiments/ folder), never from a path beside it.
"""

import contextlib
import datetime
import fcntl
import importlib.metadata
import json
import os
from typing import Any, Callable, Dict, Iterator, List, Optional

import ml_collections

from fmnist_jax import config_checks
from fmnist_jax import errors
from fmnist_jax import model_families
from fmnist_jax import runtime

CONFIG_FILE = "config.json"
LOCK_FILE = "lock"  # flock'ed by the one process writing the folder; holds that process's PID.
HISTORY_FILE = "history.jsonl"  # One record per start or resume: time, step range, versions, config.
VERSIONED_PACKAGES = ("jax", "flax", "optax", "orbax-checkpoint")  # Their versions go in each history record.
# The fields a resumed run may change: they keep the model and the step -> images mapping (which images
# step s trains on: seed, batch_size, dataset) intact. A name ending in "." covers the section. Every other
# field must match the saved run, including fields added to the project later, until listed here.
RESUME_SAFE = (
    # Optimizer hyperparameters live in the optimizer state: a resume takes the config's.
    *config_checks.HYPERPARAM_FIELDS,
    "eval_flip_tta", "eval_tta_shift_pixels",  # How evaluation reads the model, not how it trains.
    "num_epochs", "num_train_steps",  # Train longer; a run already past the end only evaluates.
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "max_checkpoints_to_keep", "eval_batch_size",
    "data.source", "data.data_dir", "data.manual_dir", "data.idx_dirs",  # Where the same images are read from.
    "runtime.",  # How the run executes, never what it computes.
)
_ABSENT = object()  # Stands for a field one of two configs lacks.
_held: Dict[str, list] = {}  # Lock path -> [open file, depth]: this process's own locks, taken again freely.


def config_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_FILE)


def default_config() -> ml_collections.ConfigDict:
  """experiments/base.py, the one place every field's default lives."""
  from fmnist_jax.experiments import base  # pylint: disable=g-import-not-at-top
  return base.get_config()


def write_atomically(path: str, write: Callable[[str], Any]) -> None:
  """write(temporary path), then rename: a kill mid-write cannot leave a truncated file, and another
  process (sharing a sweep folder) never reads a half-written one."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  """`text` into `path`, atomically."""

  def write(tmp: str) -> None:
    with open(tmp, "w") as f:
      f.write(text)

  write_atomically(path, write)


def save_config(config, workdir: str) -> None:
  write_text(config_path(workdir), config.to_json_best_effort(indent=2, sort_keys=True))


def _merged(defaults: Dict[str, Any], saved: Dict[str, Any]) -> Dict[str, Any]:
  """`saved` over `defaults`, nested dicts merged key by key."""
  out = dict(defaults)
  for key, value in saved.items():
    out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
  return out


def upgrade(saved: Dict[str, Any]) -> Dict[str, Any]:
  """A saved config dict in today's layout: runs saved before config.runtime had its fields at the top,
  and ResNets saved before config.model.stage_strides (each stage after the first halved the resolution)."""
  saved = dict(saved)
  moved = {name: saved.pop(name) for name in runtime.FIELDS if name in saved}
  if moved:
    saved["runtime"] = {**moved, **saved.get("runtime", {})}
  model = saved.get("model", {})
  if model.get("name") == "resnet" and "stage_strides" not in model and "stage_features" in model:
    saved["model"] = {**model, "stage_strides": [1] + [2] * (len(model["stage_features"]) - 1)}
  return saved


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's saved config; fields added to the project after the run was saved take base.py's defaults."""
  path = config_path(workdir)
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError as e:
    runs = runs_below(workdir) if os.path.isdir(workdir) else []
    if runs:
      raise errors.CheckpointError(
          f"--workdir={workdir} is a sweep folder ({len(runs)} runs below it); point --workdir at one of them, "
          f"e.g. --workdir={runs[0]}") from e
    raise errors.CheckpointError(f"{path} not found; --workdir must be a folder written by training") from e
  except (OSError, ValueError) as e:
    raise errors.CheckpointError(f"{path} is unreadable ({e}); restore it from the run's config") from e
  if not isinstance(saved, dict):
    raise errors.CheckpointError(f"{path} is not a config (a JSON object expected); restore it from the run's config")
  defaults = json.loads(default_config().to_json_best_effort())
  saved = upgrade(saved)
  name = saved.get("model", {}).get("name", "cnn")
  if name in model_families.NAMES:  # A saved resnet takes a resnet's defaults, not base.py's CNN's.
    defaults["model"] = json.loads(model_families.defaults(name).to_json_best_effort())
  return ml_collections.ConfigDict(_merged(defaults, saved))


def resume_safe(field: str) -> bool:
  """Whether a resumed run may change `field` (a dotted config path)."""
  return any(field == safe or (safe.endswith(".") and field.startswith(safe)) for safe in RESUME_SAFE)


def flat(config) -> List[tuple]:
  """(dotted field name, value) of every field of `config` (a ConfigDict or a nested dict), in its own order."""
  out = []
  for key, value in config.items():
    out.extend((f"{key}.{k}", v) for k, v in flat(value)) if hasattr(value, "items") else out.append((key, value))
  return out


def _flag_value(value) -> str:
  return f"'({', '.join(map(str, value))}{',' if len(value) == 1 else ''})'" if isinstance(value, list) else str(value)


def check_resume(config, workdir: str) -> None:
  """`config` may go on with the run saved in `workdir`: it differs only in RESUME_SAFE fields."""
  if not os.path.exists(config_path(workdir)):
    return
  saved = dict(flat(json.loads(load_config(workdir).to_json_best_effort())))
  current = dict(flat(json.loads(config.to_json_best_effort())))
  changed = [k for k in sorted(set(saved) | set(current))
             if saved.get(k, _ABSENT) != current.get(k, _ABSENT) and not resume_safe(k)]
  if changed:
    was = ", ".join(f"{k}={saved.get(k, 'absent')!r} (now {current.get(k, 'absent')!r})" for k in changed)
    fix = " ".join(f"--config.{k}={_flag_value(saved[k])}" for k in changed if k in saved)
    raise errors.CheckpointError(
        f"--workdir={workdir} was trained with {was}; resuming cannot change {'them' if len(changed) > 1 else 'it'} "
        f"(the model, or which images each step trains on); pass {fix or 'its saved config'} to resume it, "
        "or choose a new --workdir")


def record_start(config, workdir: str, start_step: int, end_step: int) -> None:
  """Before training steps [start_step, end_step): appends the run's record to history.jsonl and
  saves `config` as config.json. A run already past end_step trains nothing and keeps its record."""
  if start_step >= end_step:
    return
  record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "steps": [start_step, end_step], "pid": os.getpid(),
            "versions": {name: _version(name) for name in VERSIONED_PACKAGES},
            "config": json.loads(config.to_json_best_effort())}
  # One write() of one line on an O_APPEND file: records never interleave, a kill leaves at most a cut last line.
  fd = os.open(os.path.join(workdir, HISTORY_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
  finally:
    os.close(fd)
  save_config(config, workdir)


def read_history(workdir: str) -> List[Dict[str, Any]]:
  """The records of history.jsonl, oldest first (a line cut short by a kill is skipped)."""
  try:
    with open(os.path.join(workdir, HISTORY_FILE)) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return []
  records = []
  for line in lines:
    try:
      records.append(json.loads(line))
    except ValueError:
      continue
  return records


def _version(package: str) -> Optional[str]:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


@contextlib.contextmanager
def owned(config, workdir: str, chief: bool = True) -> Iterator[None]:
  """Makes this process the one writer of `workdir` while the block runs, after checking that
  `config` may train there. Readers (predict, evaluate, plot) never take it.

  An advisory flock on <workdir>/lock, which the OS releases when the process ends however it ends
  (kill -9 leaves nothing stale). A second writer gets a ConfigError naming the holder and writes
  nothing. The same process may enter it again (a sweep holds its points while each trains). Of
  the processes of one multi-host run only the chief (`chief`) takes it.
  """
  created = _missing_top(workdir)  # The folder this call creates, if any: removed again if nothing is written.
  check_workdir(workdir)
  path = os.path.realpath(os.path.join(workdir, LOCK_FILE))
  if not chief:
    check_resume(config, workdir)
    yield
    return
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
    try:
      check_resume(config, workdir)  # Refused: the lock file keeps its content.
    except BaseException:
      lock.close()
      _remove_if_unused(created, workdir)
      raise
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    _held[path] = [lock, 0]
  else:
    check_resume(config, workdir)
  _held[path][1] += 1
  failed = True
  try:
    yield
    failed = False
  finally:
    _held[path][1] -= 1
    if not _held[path][1]:
      _held.pop(path)[0].close()  # Closing the file releases the lock; the file stays.
      if failed:
        _remove_if_unused(created, workdir)


def _missing_top(workdir: str) -> Optional[str]:
  """The outermost folder of `workdir` (itself or a parent) that does not exist yet, else None."""
  top, folder = None, os.path.abspath(workdir)
  while not os.path.exists(folder):
    top, folder = folder, os.path.dirname(folder)
  return top


def _remove_if_unused(created: Optional[str], workdir: str) -> None:
  """After a failure before anything was written: the lock file and the folders this process created,
  if they hold nothing else (a failed start leaves no trace)."""
  if created is None:
    return
  folder = os.path.abspath(workdir)
  if os.listdir(folder) != [LOCK_FILE]:
    return
  os.remove(os.path.join(folder, LOCK_FILE))
  while True:
    os.rmdir(folder)
    if folder == created:
      return
    folder = os.path.dirname(folder)
    if os.listdir(folder):
      return


def is_run(path: str) -> bool:
  return os.path.isfile(config_path(path))


def runs_below(path: str) -> List[str]:
  """The run folders (holding config.json) below `path`, sorted; a run's own subfolders hold none."""
  runs = []
  for root, dirs, _ in os.walk(path):
    if root != path and is_run(root):
      runs.append(root)
      dirs.clear()
    dirs.sort()
  return sorted(runs)


def check_workdir(workdir: str) -> None:
  """The workdir must be creatable and writable before training starts."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"--workdir={workdir}: cannot create it ({e.strerror}); choose a writable folder") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise errors.ConfigError(f"--workdir={workdir} is not writable; choose a writable folder")
