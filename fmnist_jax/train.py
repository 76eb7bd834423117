"""The one host loop: trains 1..N runs of one program, each in its own workdir.

A single run is the N = 1 case and runs `steps.train_steps` as it is. N members that differ only
in seed and optimizer hyperparameters (`program_key`) are stacked on a leading model axis and run
`jax.vmap` of the same program: one compile and one dispatch per step for all of them, member i
computing what a single run with its seed computes. Either way the loop does the same: log,
evaluate and checkpoint on their cadence, stop a member whose loss turns NaN/Inf, stop everything
after the current step on SIGTERM/SIGINT with a checkpoint saved. Each member's workdir holds
config.json, checkpoints/ and train/ + eval/ event files, so a single run and a member can resume
each other.
"""

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Dict, List, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import checkpoints
from fmnist_jax import config_checks
from fmnist_jax import errors
from fmnist_jax import inference
from fmnist_jax import input_pipeline
from fmnist_jax import metrics as metrics_lib
from fmnist_jax import parallel
from fmnist_jax import preemption
from fmnist_jax import profiling
from fmnist_jax import run_folder
from fmnist_jax import runtime
from fmnist_jax import steps
from fmnist_jax import writers

# The config fields members of one program may differ in: the seed, and the hyperparameters that
# are arrays in the optimizer state (those an optimizer does not use change nothing).
VMAPPED_FIELDS = ("seed",) + config_checks.HYPERPARAM_FIELDS


def program_key(config) -> str:
  """Equal for configs that differ only in VMAPPED_FIELDS, i.e. that can train as one program."""
  fields = json.loads(config.to_json_best_effort(sort_keys=True))
  for name in VMAPPED_FIELDS:
    fields.pop(name)
  return json.dumps(fields, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Outcome:
  """How a member ended: its final evaluation, and why it stopped early, if it did."""

  metrics: Dict[str, float]
  error: Optional[str] = None  # Set when its loss turned NaN/Inf (halt_on_nan); its last good checkpoint is kept.


def _stack(*states):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def _member(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def _evaluate_members(states, batches, *, tta: inference.TTA, mesh):
  """EvalMetrics [N], one member at a time: vmapped, the activations of eval_batch_size images
  grew N-fold (10 GB for 4 base-config members on the CPU)."""
  return jax.lax.map(lambda state: steps.evaluate_batches(state, batches, tta=tta, mesh=mesh), states)


def _member_scalars(collection) -> List[Dict[str, float]]:
  num_members = jax.tree.leaves(collection)[0].shape[0]
  return [metrics_lib.scalars(_member(collection, i)) for i in range(num_members)]


class Trainer:
  """The device data and compiled programs of one program: one run, or N vmapped members.

  `states` below is one TrainState (single) or TrainStates stacked on a leading axis (vmapped).
  """

  def __init__(self, config, vmapped: bool = False):
    self.config = config
    self.vmapped = vmapped
    self.runtime = runtime.resolve(config.runtime)
    logging.info("Runtime: %s", self.runtime.describe())
    self.fused = self.runtime.fused
    self.mesh = mesh = parallel.make_mesh()
    data = input_pipeline.load_dataset(config.data)
    self.num_train = num_train = len(data["train"].labels)
    self.steps_per_epoch = num_train // config.batch_size
    self.num_steps = steps.num_train_steps(config)
    self.train_images, self.train_labels = parallel.put_replicated(
        mesh, (data["train"].images, data["train"].labels))
    self.test_batches = parallel.put_replicated(
        mesh, input_pipeline.padded_batches(data["test"], config.eval_batch_size))
    self.shuffle_key, self.step_key = steps.derive_keys(config.seed)[1:]
    self._perm = (None, None, None)  # (epoch, shuffle keys, their permutations): computed once per epoch.
    replicated = parallel.replicated(mesh)
    jit = functools.partial(jax.jit, compiler_options=self.runtime.compiler_options)
    # Members are initialized one by one: a vmapped init compiled 2x slower than the single one.
    self._init = jit(lambda key, stem: steps.create_train_state(config, key, stem, runtime=self.runtime),
                     out_shardings=replicated)
    train_steps = functools.partial(steps.train_steps, config=config, mesh=mesh)
    tta = inference.tta_of(config)
    permutation = functools.partial(input_pipeline.epoch_permutation, num_examples=num_train)
    if vmapped:
      self._stack = jit(_stack, out_shardings=replicated)
      self._train_steps = jit(jax.vmap(train_steps, in_axes=(0, None, None, 0, 0, None, None)), donate_argnums=0)
      self._permutation = jit(jax.vmap(permutation, in_axes=(0, None)))
      self._evaluate = jit(functools.partial(_evaluate_members, tta=tta, mesh=mesh))
    else:
      self._train_steps = jit(train_steps, donate_argnums=0)
      self._permutation = jit(permutation)
      self._evaluate = jit(functools.partial(steps.evaluate_batches, tta=tta, mesh=mesh))
      self._eval_step = jit(lambda state, b: steps.eval_step(state, parallel.shard_batch(
          mesh, input_pipeline.to_float_batch(b)), tta=tta))

  def initial_state(self):
    """A fresh state of this trainer's own config."""
    return self._init(steps.derive_keys(self.config.seed)[0], steps.stem_kernel(self.config, self.train_images))

  def abstract_state(self):
    return jax.eval_shape(self._init, steps.derive_keys(self.config.seed)[0], steps.abstract_stem_kernel(self.config))

  def initial_states(self, configs: Sequence):
    """Fresh states, each member with its seed's parameters and its own hyperparameters; a whitening
    stem's filters (the same for every member: the model and data are the program's) computed once."""
    stem = steps.stem_kernel(self.config, self.train_images)
    return self.stack([self._init(steps.derive_keys(c.seed)[0], stem) for c in configs], configs)

  def stack(self, states: Sequence, configs: Sequence):
    """Member states (fresh or restored), each with its config's hyperparameters."""
    states = [steps.with_config_hyperparams(s, c) for s, c in zip(states, configs)]
    return self._stack(*states) if self.vmapped else states[0]

  def member(self, states, i: int):
    return _member(states, i) if self.vmapped else states

  def member_keys(self, configs: Sequence) -> tuple:
    """(shuffle keys, step keys) of the members, stacked when vmapped."""
    keys = [steps.derive_keys(c.seed)[1:] for c in configs]
    if self.vmapped:
      return tuple(jnp.stack(k) for k in zip(*keys))
    return keys[0]

  def evaluate(self, states) -> List[Dict[str, float]]:
    """Each member's metrics over the whole test split."""
    batches = self.test_batches
    num_batches = batches["label"].shape[0]
    if self.fused:
      result = self._evaluate(states, batches)
    elif self.vmapped:  # On the CPU a Python loop over batches beats lax.map.
      result = None
      for i in range(num_batches):
        m = self._evaluate(states, jax.tree.map(lambda x: x[i:i + 1], batches))
        result = m if result is None else result.merge(m)
    else:
      result = None
      for i in range(num_batches):
        m = self._eval_step(states, jax.tree.map(lambda x: x[i], batches))
        result = m if result is None else result.merge(m)
    return _member_scalars(result) if self.vmapped else [metrics_lib.scalars(result)]

  def run_steps(self, states, step: int, end: int, member_keys=None):
    """Trains steps [step, end) of one epoch; returns (states, accumulated metrics).
    `member_keys`: `member_keys(configs)` of vmapped members (default: this trainer's config's)."""
    shuffle_keys, step_keys = (self.shuffle_key, self.step_key) if member_keys is None else member_keys
    epoch, index = divmod(step, self.steps_per_epoch)
    if self._perm[0] != epoch or self._perm[1] is not shuffle_keys:
      self._perm = (epoch, shuffle_keys, self._permutation(shuffle_keys, epoch))
    return run_chunk(self._train_steps, states, self.train_images, self.train_labels, self._perm[2], step_keys,
                     index, end - step, self.fused)


def run_chunk(program, state, images, labels, perm, step_keys, index: int, num_steps: int, fused: bool):
  """`num_steps` steps from batch `index`: one call of `program` when fused, else one call per step."""
  if fused:
    return program(state, images, labels, perm, step_keys, index, num_steps)
  acc = None
  for i in range(index, index + num_steps):
    state, m = program(state, images, labels, perm, step_keys, i, 1)
    acc = m if acc is None else acc.merge(m)
  return state, acc


def next_boundary(step: int, num_steps: int, steps_per_epoch: int, config) -> int:
  """The next step at which the host must act: log, eval, checkpoint, epoch end, profile start or
  stop (config.runtime.profile_steps), or the end."""
  candidates = [num_steps, (step // steps_per_epoch + 1) * steps_per_epoch]
  candidates += [s for s in (config.runtime.profile_steps or ()) if s > step]
  for every in (config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps):
    candidates.append((step // every + 1) * every)
  return min(candidates)


def format_eta(seconds: float) -> str:
  minutes, secs = divmod(int(seconds), 60)
  return f"{minutes}m{secs:02d}s"


def non_finite_message(window_start: int, step: int, last_saved: Optional[int], ckpt_dir: str) -> str:
  """What the NaN guard reports, for a single run and a vmapped member alike."""
  where = f"step {last_saved} in {ckpt_dir} (kept)" if last_saved is not None else "none yet"
  return (f"loss or gradients became NaN/Inf between steps {window_start} and {step}; last good checkpoint: "
          f"{where}. Lower learning_rate, or set runtime.halt_on_nan=False to continue anyway")


def _checked_workdir(config, workdir: str) -> str:
  """Checks `config` before any work starts; returns the absolute workdir."""
  config_checks.validate(config, jax.device_count())
  runtime.use_compilation_cache(config.runtime)
  return os.path.abspath(workdir)


class _Member:
  """One run of a group: its config, checkpoints and writers, and how far it got."""

  def __init__(self, config, workdir: str, is_chief: bool):
    self.config, self.workdir = config, workdir
    self.ckpt = checkpoints.Checkpointer(workdir, max_to_keep=config.max_checkpoints_to_keep)
    self.train_writer = writers.create_writer(os.path.join(workdir, "train"), enabled=is_chief)
    self.eval_writer = writers.create_writer(os.path.join(workdir, "eval"), enabled=is_chief)
    self.last_saved: Optional[int] = None
    self.error: Optional[str] = None  # Why it stopped (NaN/Inf); it is no longer saved or logged.

  def flush(self) -> None:
    self.train_writer.flush()
    self.eval_writer.flush()

  def close(self) -> None:
    try:
      self.flush()
      self.train_writer.close()
      self.eval_writer.close()
    finally:
      self.ckpt.close()


def train_and_evaluate(config, workdir: str) -> Dict[str, float]:
  """Trains (or resumes) `config` in `workdir`; returns the final evaluation metrics."""
  outcome, = train_and_evaluate_many([config], [workdir])
  if outcome.error:
    raise errors.NonFiniteLossError(outcome.error)
  return outcome.metrics


def train_and_evaluate_many(configs: Sequence, workdirs: Sequence[str],
                            trainer: Optional[Trainer] = None) -> List[Outcome]:
  """Trains (or resumes) `configs[i]` in `workdirs[i]`, all at once; configs share one program_key.

  One config trains unvmapped; several train vmapped. Members restored at different steps (e.g.
  one added to a sweep later) train as separate groups, one per step. `trainer`, built for a
  config of the same program_key, lends its device data and compiled programs.
  """
  if len({program_key(c) for c in configs}) != 1:
    raise ValueError("train_and_evaluate_many needs configs that differ only in " + ", ".join(VMAPPED_FIELDS))
  workdirs = [_checked_workdir(c, w) for c, w in zip(configs, workdirs)]
  try:
    with contextlib.ExitStack() as owner:
      own_workdirs(owner, configs, workdirs)  # Before anything is written or loaded.
      return _train_and_evaluate_owned(configs, workdirs, trainer)
  except Exception as e:  # pylint: disable=broad-except
    if parallel.peer_lost(e):
      errors.exit_peer_lost(e)
    raise


def own_workdirs(owner: contextlib.ExitStack, configs: Sequence, workdirs: Sequence[str]) -> None:
  """Makes this run the one writer of `workdirs` (run_folder.owned) for the life of `owner`.

  In a run of many processes only process 0 takes the locks, and the others learn whether it could:
  they all go on, or all stop with an error (none waits for a process that already quit)."""
  failure = None
  try:
    for config, workdir in zip(configs, workdirs):
      owner.enter_context(run_folder.owned(config, workdir, chief=jax.process_index() == 0))
  except errors.UserError as e:
    failure = e
  try:
    everyone = parallel.all_processes(failure is None)
  except Exception as e:  # pylint: disable=broad-except
    if parallel.peer_lost(e):
      errors.exit_peer_lost(e)
    raise
  if not everyone:
    raise failure or errors.ConfigError(
        f"process 0 of this run cannot train in --workdir={workdirs[0]} (its own error line says why); "
        "fix that and restart every process")


def _train_and_evaluate_owned(configs: Sequence, workdirs: Sequence[str], trainer: Optional[Trainer]):
  """train_and_evaluate_many once this process owns the workdirs."""
  if trainer is None:
    trainer = Trainer(configs[0], vmapped=len(configs) > 1)
  elif program_key(trainer.config) != program_key(configs[0]):
    raise ValueError("the trainer was built for another program_key")
  is_chief = jax.process_index() == 0
  members: List[_Member] = []
  try:
    for config, workdir in zip(configs, workdirs):
      members.append(_Member(config, workdir, is_chief))
    abstract = trainer.abstract_state()
    restored = [m.ckpt.restore_latest(abstract) for m in members]
    by_step: Dict[int, List[int]] = {}
    for i, (step, _) in enumerate(restored):
      by_step.setdefault(step or 0, []).append(i)
    outcomes: List[Optional[Outcome]] = [None] * len(configs)
    for step, indices in sorted(by_step.items()):
      group = [members[i] for i in indices]
      group_configs = [m.config for m in group]
      if step == 0:
        if len(members) == 1:
          logging.info("No checkpoint in %s: training starts from scratch", group[0].ckpt.directory)
        else:
          logging.info("%d member(s) start from scratch", len(group))
        states = trainer.initial_states(group_configs)
        for m in group:
          m.train_writer.write_hparams(writers.flatten_hparams(m.config))
      else:
        if len(members) == 1:
          logging.info("Resuming from step %d", step)
        else:
          logging.info("%d member(s) resume from step %d", len(group), step)
        states = trainer.stack([restored[i][1] for i in indices], group_configs)
      if is_chief:
        for m in group:
          run_folder.record_start(m.config, m.workdir, step, trainer.num_steps)
      for i, outcome in zip(indices, _train(trainer, group, states, step)):
        outcomes[i] = outcome
    return outcomes
  except Exception as e:  # pylint: disable=broad-except
    if parallel.peer_lost(e):  # Before `finally`: closing the checkpointers would wait for the lost process.
      errors.exit_peer_lost(e)
    raise
  finally:
    for m in members:
      m.close()


def _train(trainer: Trainer, members: List[_Member], states, step: int) -> List[Outcome]:
  """The host loop over one group of members at `step`."""
  config = members[0].config
  num_steps = trainer.num_steps
  single = len(members) == 1 and not trainer.vmapped
  if step >= num_steps:
    logging.info("Training already finished at step %d: evaluating only", step)
    final = trainer.evaluate(states)
    if single:
      logging.info("Final evaluation at step %d: %s", step, _fmt(final[0]))
    return [Outcome(m) for m in final]
  for m in members:
    m.last_saved = m.ckpt.steps()[0] if m.ckpt.steps() else None
  member_keys = trainer.member_keys([m.config for m in members])
  logging.info("Training %s%d steps (%d per epoch, batch %d, %s) on %d %s device(s)",
               "" if single else f"{len(members)} members vmapped, ", num_steps, trainer.steps_per_epoch,
               config.batch_size, "fused" if trainer.fused else "step by step", jax.device_count(),
               jax.default_backend())
  acc, window_start = None, step
  # steps/s and the ETA count training steps only: not the first chunk (it compiles), nor evaluations
  # and checkpoint saves. rate_time is None until the first chunk has run.
  rate_start, rate_time = step, None
  final: List[Optional[Dict[str, float]]] = [None] * len(members)
  live = list(range(len(members)))
  profiler = profiling.StepProfiler(config.runtime.profile_steps, members[0].workdir, jax.process_index() == 0)
  with preemption.stop_on_signals() as stop, contextlib.ExitStack() as profiled:
    profiled.callback(profiler.stop)
    while step < num_steps and live:
      # Step by step, one step per iteration, so a signal stops training after the current step.
      end = next_boundary(step, num_steps, trainer.steps_per_epoch, config) if trainer.fused else step + 1
      profiler.before(step)
      states, chunk = trainer.run_steps(states, step, end, member_keys)
      profiler.after(end, states)
      stop.agree()  # Processes of one run stop after the same step, whichever the signal reached first.
      acc = chunk if acc is None else acc.merge(chunk)
      step = end
      if rate_time is None:
        jax.block_until_ready(states)
        rate_start, rate_time = step, time.perf_counter()
      last = step == num_steps
      if step % config.log_every_steps == 0 or last:
        live = _check_finite(members, live, acc, window_start, step)
        if not live:
          break
        elapsed = time.perf_counter() - rate_time
        rate = (step - rate_start) / elapsed if step > rate_start and elapsed > 0 else None
        values = _member_scalars(acc) if trainer.vmapped else [metrics_lib.scalars(acc)]
        for i in live:
          members[i].train_writer.write_scalars(step, {**values[i], **({"steps_per_sec": rate} if rate else {})})
        speed = f"{rate:.1f} steps/s | ETA {format_eta((num_steps - step) / rate)}" if rate else "compiling"
        if single:
          logging.info("step %d/%d | loss %.4f | accuracy %.4f | %s", step, num_steps,
                       values[0]["loss"], values[0]["accuracy"], speed)
        else:
          losses = np.array([v["loss"] for v in values])
          logging.info("step %d/%d | %d members | loss %.4f (min %.4f, max %.4f) | %s",
                       step, num_steps, len(values), np.nanmean(losses), np.nanmin(losses),
                       np.nanmax(losses), speed)
        acc, window_start = None, step
        rate_start, rate_time = step, time.perf_counter()
      host_start = time.perf_counter()
      if step % config.eval_every_steps == 0 and not last:  # The last step's is the final evaluation, below.
        _log_evaluation(members, live, trainer.evaluate(states), step, "eval", single)
      if step % config.checkpoint_every_steps == 0 or last or stop:
        if acc is not None:
          live = _check_finite(members, live, acc, window_start, step)
          if not live:
            break
        for i in live:
          members[i].ckpt.save(step, trainer.member(states, i))
          members[i].last_saved = step
      if last or stop:  # Committed before the final evaluation, which a signal ends at once.
        for m in members:
          m.ckpt.wait()
          m.flush()
      rate_time += time.perf_counter() - host_start
      if stop:
        where = f"checkpoint saved in {members[0].ckpt.directory}" if single else \
            "checkpoints saved in each member's workdir"
        raise errors.Interrupted(f"stopped by {stop.signal_name} at step {step}; {where}; "
                                 "run the same command to resume")
  if live and step >= num_steps:
    # Outside the signal block: SIGTERM/SIGINT now exits 75 at once (preemption.exit_at_once); the
    # last step is saved, so the rerun only evaluates.
    final = trainer.evaluate(states)
    _log_evaluation(members, live, final, step, "Final evaluation", single)
    for m in members:
      m.flush()
  never_evaluated = dict.fromkeys(("loss", "accuracy", "precision", "recall"), float("nan"))
  return [Outcome(final[i] or never_evaluated, m.error) for i, m in enumerate(members)]


def _log_evaluation(members: List[_Member], live: List[int], results: List[Dict[str, float]], step: int,
                    what: str, single: bool) -> None:
  """Writes each live member's evaluation and logs one line."""
  for i in live:
    members[i].eval_writer.write_scalars(step, results[i])
  if single:
    logging.info("%s at step %d: %s", what, step, _fmt(results[0]))
  else:
    accuracies = [results[i]["accuracy"] for i in live]
    logging.info("%s at step %d: accuracy %.4f (min %.4f, max %.4f) over %d live members", what, step,
                 np.mean(accuracies), min(accuracies), max(accuracies), len(accuracies))


def _check_finite(members: List[_Member], live: List[int], acc, window_start: int, step: int) -> List[int]:
  """The members still live: one whose loss or gradients turned NaN/Inf stops being trained,
  saved and logged (with runtime.halt_on_nan)."""
  finite = np.atleast_1d(np.asarray(jax.device_get(acc.all_finite.compute())))
  still = []
  for i in live:
    m = members[i]
    if m.config.runtime.halt_on_nan and not finite[i]:
      m.error = non_finite_message(window_start, step, m.last_saved, m.ckpt.directory)
      if len(members) > 1:
        logging.warning("member seed=%d learning_rate=%g: %s", m.config.seed, m.config.learning_rate, m.error)
    else:
      still.append(i)
  return still


def _fmt(values: Dict[str, float]) -> str:
  return ", ".join(f"{k} {v:.4f}" for k, v in values.items())
