"""Runs of one config that differ only in seed and optimizer hyperparameters, trained at once.

The members are stacked on a leading model axis; the train program is `jax.vmap` of the single-run
`train.train_steps` (the batch stays sharded over the `data` mesh axis), evaluation maps
`train.evaluate_batches` over the members. So N members cost one compile and one dispatch per step,
and member i computes what a single run with its seed and hyperparameters computes (tested to
allclose). Learning rate and Adam's b1/b2/eps are arrays in the optimizer state
(`optax.inject_hyperparams`), so they vary per member inside the same program. Each member keeps
its own workdir laid out as `train.train_and_evaluate` lays it out (config.json, checkpoints,
train/ and eval/ event files), so either can resume the other's run.
"""

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
from fmnist_jax import errors
from fmnist_jax import input_pipeline
from fmnist_jax import metrics as metrics_lib
from fmnist_jax import parallel
from fmnist_jax import preemption
from fmnist_jax import train
from fmnist_jax import writers

OPTIMIZER_HPARAMS = ("learning_rate", "b1", "b2", "eps")  # Arrays in the optimizer state, not in the program.
VMAPPED_FIELDS = ("seed",) + OPTIMIZER_HPARAMS  # The config fields members may differ in.


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


def _evaluate_members(states, batches, *, mesh):
  """EvalMetrics [N] of every member, one member at a time: vmapped, the activations of
  eval_batch_size images grew N-fold (10 GB for 4 base-config members on the CPU)."""
  return jax.lax.map(lambda state: train.evaluate_batches(state, batches, mesh=mesh), states)


class EnsembleTrainer:
  """The device data (shared by all members) and the vmapped programs."""

  def __init__(self, config):
    self.config = config
    self.single = train.Trainer(config, workdir="")  # Data, mesh, schedule and fusing, as a single run has them.
    t = self.single
    replicated = parallel.replicated(t.mesh)
    jit = functools.partial(jax.jit, compiler_options=train.compiler_options(config))  # As train.Trainer.
    # Members are initialized one by one: the vmapped init compiled 2x slower than the single one.
    self._init = jit(functools.partial(train.create_train_state, config), out_shardings=replicated)
    self._stack = jit(_stack, out_shardings=replicated)
    self._train_steps = jit(
        jax.vmap(functools.partial(train.train_steps, batch_size=config.batch_size, mesh=t.mesh),
                 in_axes=(0, None, None, 0, None, None)),
        donate_argnums=0)
    self._permutations = jit(
        lambda keys, epoch: jax.vmap(lambda k: input_pipeline.epoch_permutation(k, epoch, t.num_train))(keys))
    self._evaluate = jit(functools.partial(_evaluate_members, mesh=t.mesh))
    self._perms = (None, None, None)  # (epoch, shuffle keys [N], their permutations [N, num_train]).

  def initial_states(self, configs: Sequence):
    """Fresh stacked states, each member with its seed's parameters and its own hyperparameters."""
    return self.stack([self._init(train.derive_keys(c.seed)[0]) for c in configs], configs)

  def stack(self, states: Sequence, configs: Sequence):
    """Member states (fresh or restored) stacked, each with its config's hyperparameters."""
    return self._stack(*[train.with_config_hyperparams(s, c) for s, c in zip(states, configs)])

  def evaluate(self, states) -> List[Dict[str, float]]:
    batches = self.single.test_batches
    if self.single.fused:
      result = self._evaluate(states, batches)
    else:  # As in train.Trainer.evaluate: on the CPU a Python loop over batches beats lax.map.
      result = None
      for i in range(batches["label"].shape[0]):
        m = self._evaluate(states, jax.tree.map(lambda x: x[i:i + 1], batches))
        result = m if result is None else result.merge(m)
    return _member_scalars(result)

  def run_steps(self, states, shuffle_keys, step: int, end: int):
    """Trains every member through steps [step, end) of one epoch; returns (states, metrics)."""
    t = self.single
    epoch, index = divmod(step, t.steps_per_epoch)
    if self._perms[0] != epoch or self._perms[1] is not shuffle_keys:
      self._perms = (epoch, shuffle_keys, self._permutations(shuffle_keys, epoch))
    perms = self._perms[2]
    return train.run_chunk(self._train_steps, states, t.train_images, t.train_labels, perms, index,
                           end - step, t.fused)


def _member_scalars(collection) -> List[Dict[str, float]]:
  num_members = jax.tree.leaves(collection)[0].shape[0]
  return [metrics_lib.scalars(_member(collection, i)) for i in range(num_members)]


def train_and_evaluate_many(configs: Sequence, workdirs: Sequence[str],
                            trainer: Optional[EnsembleTrainer] = None) -> List[Outcome]:
  """Trains (or resumes) `configs[i]` in `workdirs[i]`, all at once; configs share one program_key.

  Members restored at different steps (e.g. one added to a sweep later) train as separate vmapped
  groups, one per step. `trainer`, built for a config of the same program_key, lends its device
  data and compiled programs (a sweep's later groups skip loading and, at equal size, compiling).
  """
  if len({program_key(c) for c in configs}) != 1:
    raise ValueError("train_and_evaluate_many needs configs that differ only in " + ", ".join(VMAPPED_FIELDS))
  workdirs = [train.prepare(c, w) for c, w in zip(configs, workdirs)]
  if trainer is None:
    trainer = EnsembleTrainer(configs[0])
  elif program_key(trainer.config) != program_key(configs[0]):
    raise ValueError("the trainer was built for another program_key")
  is_chief = jax.process_index() == 0
  ckpts, run_writers = [], []
  try:
    for config, workdir in zip(configs, workdirs):
      ckpts.append(checkpoints.Checkpointer(workdir, max_to_keep=config.max_checkpoints_to_keep))
      run_writers.append(_Writers(workdir, is_chief))
    abstract = trainer.single.abstract_state()
    restored = [ckpt.restore_latest(abstract) for ckpt in ckpts]
    by_step = {}
    for i, (step, _) in enumerate(restored):
      by_step.setdefault(step or 0, []).append(i)
    outcomes = [None] * len(configs)
    for step, members in sorted(by_step.items()):
      if step == 0:
        logging.info("%d member(s) start from scratch", len(members))
        states = trainer.initial_states([configs[i] for i in members])
        for i in members:
          run_writers[i].train.write_hparams(writers.flatten_hparams(configs[i]))
      else:
        logging.info("%d member(s) resume from step %d", len(members), step)
        states = trainer.stack([restored[i][1] for i in members], [configs[i] for i in members])
      if is_chief:
        for i in members:
          train.save_config(configs[i], workdirs[i])
      group = _Group([configs[i] for i in members], [ckpts[i] for i in members],
                     [run_writers[i] for i in members])
      for i, outcome in zip(members, group.train(trainer, states, step)):
        outcomes[i] = outcome
    return outcomes
  finally:
    for w in run_writers:
      w.close()
    for ckpt in ckpts:
      ckpt.close()


class _Writers:
  """The train/ and eval/ event writers of one member's workdir."""

  def __init__(self, workdir: str, enabled: bool):
    self.train = writers.create_writer(os.path.join(workdir, "train"), enabled=enabled)
    self.eval = writers.create_writer(os.path.join(workdir, "eval"), enabled=enabled)

  def flush(self):
    self.train.flush()
    self.eval.flush()

  def close(self):
    self.flush()
    self.train.close()
    self.eval.close()


class _Group:
  """Members at one step, trained together: the loop of train._loop with a model axis."""

  def __init__(self, configs, ckpts, run_writers):
    self.configs, self.ckpts, self.writers = configs, ckpts, run_writers
    self.errors: Dict[int, str] = {}  # Member → why it stopped (NaN/Inf); it is no longer saved or logged.
    self.last_saved: List[Optional[int]] = [None] * len(configs)

  def _live(self) -> List[int]:
    return [i for i in range(len(self.configs)) if i not in self.errors]

  def train(self, trainer: EnsembleTrainer, states, step: int) -> List[Outcome]:
    config, t = self.configs[0], trainer.single
    num_steps = t.num_steps
    if step >= num_steps:
      logging.info("Training already finished at step %d: evaluating only", step)
      return [Outcome(m) for m in trainer.evaluate(states)]
    if step:
      self.last_saved = [step] * len(self.configs)
    shuffle_keys = jnp.stack([train.derive_keys(c.seed)[1] for c in self.configs])
    logging.info("Training %d members vmapped, %d steps (%d per epoch, batch %d, %s) on %d %s device(s)",
                 len(self.configs), num_steps, t.steps_per_epoch, config.batch_size,
                 "fused" if t.fused else "step by step", jax.device_count(), jax.default_backend())
    acc, window_start, window_time = None, step, time.perf_counter()
    final = None
    with preemption.stop_on_signals() as stop:
      while step < num_steps:
        # Step by step, one step per iteration (as train._loop), so a signal stops after the current step.
        end = train.next_boundary(step, num_steps, t.steps_per_epoch, config) if t.fused else step + 1
        states, chunk = trainer.run_steps(states, shuffle_keys, step, end)
        acc = chunk if acc is None else acc.merge(chunk)
        step = end
        last = step == num_steps
        if step % config.log_every_steps == 0 or last:
          self._check_finite(acc, window_start, step)
          rate = (step - window_start) / (time.perf_counter() - window_time)
          values = _member_scalars(acc)
          for i in self._live():
            self.writers[i].train.write_scalars(step, {**values[i], "steps_per_sec": rate})
          losses = np.array([v["loss"] for v in values])
          logging.info("step %d/%d | %d members | loss %.4f (min %.4f, max %.4f) | %.1f steps/s | ETA %s",
                       step, num_steps, len(values), np.nanmean(losses), np.nanmin(losses),
                       np.nanmax(losses), rate, train.format_eta((num_steps - step) / rate))
          acc, window_start, window_time = None, step, time.perf_counter()
        if step % config.eval_every_steps == 0 or last:
          final = trainer.evaluate(states)
          for i in self._live():
            self.writers[i].eval.write_scalars(step, final[i])
          accuracies = [final[i]["accuracy"] for i in self._live()]
          if accuracies:
            logging.info("eval at step %d: accuracy %.4f (min %.4f, max %.4f) over %d live members", step,
                         np.mean(accuracies), min(accuracies), max(accuracies), len(accuracies))
        if step % config.checkpoint_every_steps == 0 or last or stop:
          if acc is not None:
            self._check_finite(acc, window_start, step)
          for i in self._live():
            self.ckpts[i].save(step, _member(states, i))
            self.last_saved[i] = step
        if stop and not last:
          for i in range(len(self.configs)):
            self.ckpts[i].wait()
            self.writers[i].flush()
          raise errors.Interrupted(f"stopped by {stop.signal_name} at step {step}; checkpoints saved in each "
                                   "member's workdir; run the same command to resume")
    return [Outcome(final[i], self.errors.get(i)) for i in range(len(self.configs))]

  def _check_finite(self, acc, window_start: int, step: int) -> None:
    """Members whose loss or gradients turned NaN/Inf stop being saved and logged (a single run stops)."""
    finite = np.asarray(jax.device_get(acc.all_finite.compute()))
    for i in self._live():
      if self.configs[i].halt_on_nan and not finite[i]:
        self.errors[i] = train.non_finite_message(window_start, step, self.last_saved[i],
                                                  self.ckpts[i].directory)
        logging.warning("member seed=%d learning_rate=%g: %s", self.configs[i].seed,
                        self.configs[i].learning_rate, self.errors[i])
