"""The one place that talks to Orbax: save, find and restore training state in `<workdir>/checkpoints`.

Each step is stored as two items: `params` and `train` (step and optimizer state), plus a third,
`model_state` (BatchNorm statistics, EMA of parameters and statistics), only for models that have such state.
Evaluation and prediction read `params` and `model_state` (`restore_for_inference`), so a shipped model
can omit the optimizer state.
A step that fails to restore (a truncated file, missing metadata, an interrupted save) is
reported and skipped for the newest step that restores; nothing is ever deleted to recover
(training renames the skipped steps `<step>.unrestorable`, so that it can save them anew).
A save that cannot be written (disk full, permissions) is reported as one CheckpointError; the
steps committed before it stay intact.
"""

import asyncio
import contextlib
import dataclasses
import functools
import logging as std_logging
import os
import re
import sys
from typing import Any, Callable, List, Optional, Tuple

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from fmnist_jax import errors
from fmnist_jax import inference
from fmnist_jax import models
from fmnist_jax import run_folder
from fmnist_jax import steps

CHECKPOINT_SUBDIR = "checkpoints"
MODEL_STATE = "model_state"  # The item of the TrainState fields below, saved when any is present.
MODEL_STATE_FIELDS = ("batch_stats", "ema_params", "ema_batch_stats")


def model_state(state) -> dict:
  """The model state fields `state` (a TrainState) holds; {} for a model with none (the seed CNN)."""
  return {name: getattr(state, name) for name in MODEL_STATE_FIELDS if getattr(state, name, None) is not None}


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)  # Orbax rejects relative paths.


def _not_unretrieved(record) -> bool:
  """Drops asyncio's "... exception was never retrieved" records (see Checkpointer._write_errors)."""
  return "exception was never retrieved" not in record.getMessage()


def _abandoned(unraisable) -> bool:
  """A coroutine of a failed read or write closed late, or TensorStore's completion callback of a
  failed write calling into the event loop Orbax already closed."""
  return asyncio.iscoroutine(unraisable.object) or (
      isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value))


def drop_abandoned_work_reports() -> None:
  """A failed Orbax read or write leaves work behind that Python reports as it dies, each with a
  traceback ("Exception ignored in: <coroutine ...>", "RuntimeError: Event loop is closed"), before
  and after the one line that reports the failure: that line says it all, so drop them."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_abandoned_work", False):
    return

  def hook(unraisable):
    if not _abandoned(unraisable):
      previous(unraisable)

  hook.drops_abandoned_work = True
  sys.unraisablehook = hook


class Checkpointer:
  """An Orbax CheckpointManager with async saves, keep-last-N, and corruption fallback."""

  def __init__(self, workdir: str, *, max_to_keep: Optional[int] = None, read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    self._read_only = read_only
    drop_abandoned_work_reports()  # Installed first: the reports come as the failure happens.
    self.failures = []  # "step N: reason" of each newer step the last restore skipped.
    self.closed = False
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only)
    # Known handlers let a reader see stored shapes before restoring (see _check_params_shapes).
    handlers = {name: ocp.StandardCheckpointHandler() for name in ("params", "train", MODEL_STATE)}
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=handlers if read_only else None)

  def steps(self) -> list:
    return sorted(self._manager.all_steps(), reverse=True)

  _saving = None  # The Checkpointer whose async save started last (see save).

  def save(self, step: int, state) -> None:
    """Starts an async save of `state` (a flax TrainState) at `step`."""
    previous = Checkpointer._saving
    if jax.process_count() > 1 and previous is not None and previous is not self and not previous.closed:
      previous.wait()  # Orbax's multi-host barriers of two managers saving at once collide ("already ongoing").
    Checkpointer._saving = self
    items = {"params": ocp.args.StandardSave(state.params),
             "train": ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state})}
    if model_state(state):
      items[MODEL_STATE] = ocp.args.StandardSave(model_state(state))
    with self._write_errors():  # Orbax first waits for the previous save, raising its error.
      self._manager.save(step, args=ocp.args.Composite(**items))

  def wait(self) -> None:
    """Blocks until pending saves are committed; raises the save's error, if any."""
    with self._write_errors():
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _write_errors(self):
    """A failed async write surfaces at the next save or wait: report it in one line."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  # Orbax/TensorStore raise many kinds.
      os_error = re.search(r"os_error_code='(\d+)'", str(e))  # TensorStore's text ends with the cause.
      reason = os.strerror(int(os_error.group(1))) if os_error else (
          str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      self._manager.reload()  # Forget the step that was not committed.
      # The failed write's futures are garbage-collected later, possibly after our error line, and
      # asyncio logs each as "exception was never retrieved" with a traceback: the line says it all.
      std_logging.getLogger("asyncio").addFilter(_not_unretrieved)
      kept = f"step {self.steps()[0]} is intact" if self.steps() else "no earlier checkpoint exists"
      raise errors.CheckpointError(
          f"cannot write a checkpoint in {self.directory} ({reason}); {kept}. Free disk space or fix "
          "permissions, then run the same command to resume") from e

  def _restore_newest(self, args_for_step, check=None) -> Tuple[Optional[int], Any]:
    self.failures = failures = []
    for step in self.steps():
      try:
        if check is not None:
          check(step)
        return step, self._manager.restore(step, args=args_for_step)
      except Exception as e:  # pylint: disable=broad-except  # Orbax/TensorStore raise many kinds.
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        logging.warning("Checkpoint step %d in %s cannot be restored (%s); trying an older step",
                        step, self.directory, reason)
        failures.append(f"step {step}: {reason}")
    if failures:
      raise errors.CheckpointError(
          f"no checkpoint in {self.directory} restores into this config ({failures[0]}); use the config "
          "the run was trained with, or a new --workdir")
    return None, None

  def restore_latest(self, abstract_state) -> Tuple[Optional[int], Any]:
    """(step, state) of the newest good checkpoint, typed like `abstract_state`; (None, None) if none."""
    items = {"params": ocp.args.StandardRestore(abstract_state.params),
             "train": ocp.args.StandardRestore({"step": abstract_state.step, "opt_state": abstract_state.opt_state})}
    if model_state(abstract_state):
      items[MODEL_STATE] = ocp.args.StandardRestore(model_state(abstract_state))
    step, restored = self._restore_newest(ocp.args.Composite(**items))
    if step is None:
      return None, None
    self._set_aside_newer_than(step)
    return step, abstract_state.replace(
        params=restored.params, step=restored.train["step"], opt_state=restored.train["opt_state"],
        **(restored[MODEL_STATE] if MODEL_STATE in items else {}))

  def _set_aside_newer_than(self, step: int) -> None:
    """Renames the steps newer than `step` (they failed to restore) to `<step>.unrestorable`.

    Kept for inspection, and out of Orbax's way: it skips saving any step not newer than its
    latest one, so a resumed run could never replace them.
    """
    newer = [s for s in self.steps() if s > step]
    if self._read_only or not newer:
      return
    if jax.process_index() != 0:  # Of many processes (all restoring from one shared folder), 0 renames.
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("checkpoints set aside")
      self._manager.reload()
      return
    for bad in newer:
      path = os.path.join(self.directory, str(bad))
      target, n = f"{path}.unrestorable", 0
      while os.path.exists(target):
        n += 1
        target = f"{path}.unrestorable-{n}"
      os.rename(path, target)
      logging.warning("Checkpoint step %d moved to %s (kept); training resumes from step %d", bad, target, step)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("checkpoints set aside")
    self._manager.reload()

  def restore_params(self, abstract_params) -> Tuple[int, Any]:
    """(step, params) of the newest good checkpoint; only the `params` item is read."""
    step, restored = self.restore_model(abstract_params, {})
    return step, restored[0]

  def restore_model(self, abstract_params, abstract_model_state: dict) -> Tuple[int, Tuple[Any, dict]]:
    """(step, (params, model state)) of the newest good checkpoint, without the optimizer state;
    `abstract_model_state` is `model_state()` of an abstract TrainState ({}: only `params` is read).

    Leaves without a sharding are placed on this process's first device: Orbax would otherwise
    reuse the saved topology and refuse a run trained on other devices.
    """
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_params, abstract_model_state = jax.tree.map(
        lambda a: a if getattr(a, "sharding", None) is not None
        else jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=local), (abstract_params, abstract_model_state))
    items = {"params": ocp.args.StandardRestore(abstract_params)}
    if abstract_model_state:
      items[MODEL_STATE] = ocp.args.StandardRestore(abstract_model_state)
    step, restored = self._restore_newest(
        ocp.args.Composite(**items),
        check=(lambda step: self._check_params_shapes(step, abstract_params)) if self._read_only else None)
    if step is None:
      raise errors.CheckpointError(f"no checkpoint in {self.directory}; train one with fmnist_jax.main "
                                   "or point --workdir at a trained run")
    return step, (restored.params, restored[MODEL_STATE] if abstract_model_state else {})

  def _check_params_shapes(self, step: int, abstract_params) -> None:
    """Rejects a shape mismatch from metadata: Orbax's failed reads leave threads that print
    tracebacks at exit. Read-only Checkpointers only: they register the handler that reads it."""
    metadata = self._manager.item_metadata(step).get("params")
    if metadata is None:
      raise ValueError("the parameters' metadata file (_METADATA) is missing or unreadable")
    stored = {jax.tree_util.keystr(k): tuple(m.shape)
              for k, m in jax.tree_util.tree_leaves_with_path(metadata.tree)}
    wanted = {jax.tree_util.keystr(k): tuple(a.shape)
              for k, a in jax.tree_util.tree_leaves_with_path(abstract_params)}
    if stored != wanted:
      name = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))[0]
      raise ValueError(f"parameter {name} is stored as {stored.get(name, 'absent')}, the config "
                       f"wants {wanted.get(name, 'absent')}")

  def close(self) -> None:
    """Waits for pending saves (raising their errors) and releases Orbax's threads."""
    try:
      self.wait()
    finally:
      self._manager.close()
      self.closed = True
      if Checkpointer._saving is self:
        Checkpointer._saving = None


@dataclasses.dataclass(frozen=True)
class Restored:
  """A workdir's newest restorable model, ready to apply."""

  config: ml_collections.ConfigDict  # The run's saved config (today's defaults for fields it predates).
  step: int  # Training step of the restored checkpoint.
  apply_fn: Callable  # The model's `apply`, with the arithmetic of this backend's runtime.
  variables: dict  # `inference_variables` of the checkpoint: EMA weights and statistics where kept.
  model_state: dict  # The checkpoint's model state items (batch_stats, ema_params, ema_batch_stats).
  params: Any  # The checkpoint's own parameters.
  tta: inference.TTA  # The config's test-time augmentation.
  skipped: List[str]  # The newer steps that did not restore, each "step N: reason".


def restore_for_inference(workdir: str) -> Restored:
  """Reads `workdir`'s config and its newest checkpoint that restores (parameters and model state;
  the optimizer state is never read, so a shipped model may omit it)."""
  config = run_folder.load_config(workdir)
  try:
    model = models.create_model(config)
    abstract_params, abstract_model_state = jax.eval_shape(
        functools.partial(steps.init_variables, config), jax.random.PRNGKey(0),
        steps.abstract_stem_kernel(config))  # Shapes only.
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise errors.CheckpointError(
        f"{run_folder.config_path(workdir)} does not describe a model ({type(e).__name__}: {e}); restore the "
        "config.json the run was trained with") from e
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    step, (params, model_state) = ckpt.restore_model(
        abstract_params, {k: v for k, v in abstract_model_state.items() if v is not None})
    skipped = list(ckpt.failures)
  finally:
    ckpt.close()
  return Restored(config=config, step=step, apply_fn=model.apply,
                  variables=inference.inference_variables(params, **model_state), model_state=model_state,
                  params=params, tta=inference.tta_of(config), skipped=skipped)
