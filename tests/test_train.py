"""Steps learn; the loop evaluates, logs, checkpoints and resumes bit for bit."""

import functools
import glob
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from fmnist_jax import checkpoints
from fmnist_jax import errors
from fmnist_jax import input_pipeline
from fmnist_jax import run_folder
from fmnist_jax import steps
from fmnist_jax import train
from tests.conftest import assert_resume_across_an_epoch_is_bitwise, final_params, tiny_config, unchecked_optimizer


def read_scalars(logdir):
  """{tag: {step: value}} from the event files of `logdir`, with TensorBoard's own reader."""
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  return {tag: {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
          for tag in acc.Tags()["tensors"] if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}


def test_train_step_lowers_the_loss_on_a_fixed_batch(fmnist):
  config = tiny_config()
  state = steps.create_train_state(config, jax.random.PRNGKey(0))
  batch = input_pipeline.gather_batch(fmnist["train"].images, fmnist["train"].labels,
                                      jnp.arange(100), 0, 100)
  step = jax.jit(functools.partial(steps.train_step, step_key=steps.derive_keys(0)[2], config=config))
  state, first = step(state, batch)
  for _ in range(20):
    state, last = step(state, batch)
  assert int(state.step) == 21
  assert float(last.loss.compute()) < 0.5 * float(first.loss.compute())


@pytest.mark.slow
def test_bfloat16_compute_learns_with_float32_parameters_and_adam_state(fmnist):
  batch = input_pipeline.gather_batch(fmnist["train"].images, fmnist["train"].labels, jnp.arange(100), 0, 100)
  step = jax.jit(functools.partial(steps.train_step, step_key=steps.derive_keys(0)[2], config=tiny_config()))
  start = steps.create_train_state(tiny_config(), jax.random.PRNGKey(0))
  f32_state, _ = step(start, batch)
  state, first = step(steps.create_train_state(tiny_config(dtype="bfloat16"), jax.random.PRNGKey(0)), batch)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((state.params, state.opt_state))
             if jnp.issubdtype(leaf.dtype, jnp.floating))
  gap = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, f32_state.params)
  assert 0 < max(jax.tree.leaves(gap)) < 0.01  # Same start, bf16 arithmetic: close, not equal.
  for _ in range(20):
    state, last = step(state, batch)
  assert float(last.loss.compute()) < 0.5 * float(first.loss.compute())


def test_eval_step_ignores_masked_rows(fmnist):
  config = tiny_config()
  state = steps.create_train_state(config, jax.random.PRNGKey(0))
  images = input_pipeline.to_float(fmnist["test"].images[:8])
  labels = fmnist["test"].labels[:8]
  full = steps.eval_step(state, {"image": images[:4], "label": labels[:4], "mask": np.ones(4, bool)})
  padded = steps.eval_step(state, {"image": images, "label": labels, "mask": np.arange(8) < 4})
  for key, value in full.compute().items():
    np.testing.assert_allclose(padded.compute()[key], value, rtol=1e-6)


@pytest.mark.slow
def test_run_logs_evaluates_and_checkpoints_on_schedule(tmp_path):
  workdir = str(tmp_path / "run")
  final = train.train_and_evaluate(tiny_config(num_train_steps=25, eval_every_steps=10,
                                               log_every_steps=10, checkpoint_every_steps=20), workdir)
  evals = read_scalars(os.path.join(workdir, "eval"))
  trains = read_scalars(os.path.join(workdir, "train"))
  assert set(evals) >= {"loss", "accuracy", "precision", "recall"}
  assert sorted(evals["accuracy"]) == [10, 20, 25]  # Every eval_every_steps and the last step.
  assert set(trains) >= {"loss", "accuracy", "precision", "recall", "steps_per_sec"}
  assert sorted(trains["loss"]) == [10, 20, 25]
  assert evals["accuracy"][25] == pytest.approx(final["accuracy"])
  assert final["accuracy"] > 0.5  # 25 steps of a tiny model on real data: well above chance (0.1).
  assert checkpoints.Checkpointer(workdir, read_only=True).steps() == [25, 20]
  assert run_folder.load_config(workdir).model.conv_features == [8, 16]
  assert glob.glob(os.path.join(workdir, "train", "events.out.tfevents.*"))


@pytest.mark.slow
def test_stop_and_resume_equals_straight_training_bitwise(tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train_and_evaluate(tiny_config(num_train_steps=30), straight)
  train.train_and_evaluate(tiny_config(num_train_steps=20), resumed)
  assert checkpoints.Checkpointer(resumed, read_only=True).steps()[0] == 20
  train.train_and_evaluate(tiny_config(num_train_steps=30), resumed)
  (step_a, a), (step_b, b) = final_params(straight), final_params(resumed)
  assert step_a == step_b == 30
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_resume_crosses_an_epoch_boundary_with_the_same_data_order(tmp_path):
  assert_resume_across_an_epoch_is_bitwise(tmp_path)


@pytest.mark.slow
def test_finished_run_rerun_only_evaluates(tmp_path):
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(tiny_config(num_train_steps=10), workdir)
  again = train.train_and_evaluate(tiny_config(num_train_steps=10), workdir)
  assert again == pytest.approx(first)
  assert checkpoints.Checkpointer(workdir, read_only=True).steps() == [10]


@pytest.mark.slow
def test_workdir_of_another_model_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(num_train_steps=10), workdir)
  with pytest.raises(errors.CheckpointError, match="model.dense_features=32"):
    train.train_and_evaluate(tiny_config(**{"model.dense_features": 64}), workdir)


@pytest.mark.slow
def test_resume_takes_the_configs_learning_rate(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(num_train_steps=10), workdir)
  _, before = final_params(workdir)
  with unchecked_optimizer():  # A zero rate is refused as a user's config; here it proves the rate is taken.
    train.train_and_evaluate(tiny_config(num_train_steps=20, learning_rate=0.0), workdir)
  step, after = final_params(workdir)
  assert step == 20
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(x, y)  # Adam with step size 0 leaves the parameters alone.


class _ExitedAtOnce(Exception):
  """What preemption.exit_at_once's handler does (os._exit(75)), as an exception a test can catch."""


def _signal_handler_raising(signum, frame):
  del frame
  raise _ExitedAtOnce(signum)


def test_a_signal_during_the_final_evaluation_ends_it_at_once_with_the_last_step_saved(tmp_path, monkeypatch,
                                                                                       caplog):
  workdir = str(tmp_path / "run")
  config = tiny_config(num_train_steps=4, log_every_steps=2, eval_every_steps=100, checkpoint_every_steps=100)
  evaluate = train.Trainer.evaluate

  def signalled(self, states):  # The only evaluation is the final one.
    os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(self, states)

  monkeypatch.setattr(train.Trainer, "evaluate", signalled)
  previous = signal.signal(signal.SIGTERM, _signal_handler_raising)
  try:
    with pytest.raises(_ExitedAtOnce):  # It was caught by the training loop's handler: evaluated on, exit 0.
      train.train_and_evaluate(config, workdir)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert checkpoints.Checkpointer(workdir, read_only=True).steps() == [4]
  monkeypatch.setattr(train.Trainer, "evaluate", evaluate)
  with caplog.at_level("INFO"):
    final = train.train_and_evaluate(config, workdir)
  assert "Training already finished at step 4: evaluating only" in caplog.text and final["accuracy"] > 0.1


def test_a_signal_during_the_last_step_saves_it_and_exits_interrupted(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  config = tiny_config(num_train_steps=4, log_every_steps=2, eval_every_steps=100, checkpoint_every_steps=100)
  run_steps = train.Trainer.run_steps

  def signalled(self, states, step, end, member_keys=None):
    if end == 4:
      os.kill(os.getpid(), signal.SIGTERM)
    return run_steps(self, states, step, end, member_keys)

  monkeypatch.setattr(train.Trainer, "run_steps", signalled)
  with pytest.raises(errors.Interrupted, match="stopped by SIGTERM at step 4"):
    train.train_and_evaluate(config, workdir)
  assert checkpoints.Checkpointer(workdir, read_only=True).steps() == [4]
  assert "accuracy" not in read_scalars(os.path.join(workdir, "eval"))  # No evaluation ran.
