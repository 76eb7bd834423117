"""Vmapped members: each equals the single run with its seed and hyperparameters, and resumes."""

import logging

import jax
import numpy as np
import pytest

from fmnist_jax import checkpoints
from fmnist_jax import train
from tests.conftest import final_params, rolled_back_copy, tiny_config, unchecked_optimizer

METRIC_ATOL = 5e-4  # Float rounding may flip a few of the 10,000 test predictions.
DIVERGING_LR = 1e20  # Adam moves every weight by ~lr on its first step: the next loss is NaN.


def assert_params_close(a, b):
  """Equal up to float32 reordering (vmapped or sharded sums), amplified a little by Adam's
  normalization over the steps; another seed or learning rate differs by ~1e-2."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=5e-5)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
  """A vmapped pair: a diverging learning rate with seed 1 first, then conftest's tiny run (evaluated
  only at the end, which changes no training step)."""
  root = tmp_path_factory.mktemp("ensemble")
  num_steps = tiny_config().num_train_steps
  configs = [tiny_config(seed=1, learning_rate=DIVERGING_LR, eval_every_steps=num_steps),
             tiny_config(eval_every_steps=num_steps)]
  workdirs = [str(root / "diverging"), str(root / "tiny")]
  with unchecked_optimizer():
    return configs, workdirs, train.train_and_evaluate_many(configs, workdirs)


@pytest.mark.slow
def test_member_equals_the_single_run_with_its_seed_and_learning_rate(members, tiny_run):
  # Member 1 shares the program with a member of another seed and learning rate: if keys or
  # hyperparameters leaked between members, it would not match the single run.
  _, workdirs, outcomes = members
  single_workdir, single_metrics = tiny_run
  step, params = final_params(workdirs[1])
  single_step, single_params = final_params(single_workdir)
  assert step == single_step == tiny_config().num_train_steps
  assert_params_close(params, single_params)
  assert outcomes[1].error is None
  for name, value in single_metrics.items():
    assert outcomes[1].metrics[name] == pytest.approx(value, abs=METRIC_ATOL), name


@pytest.mark.slow  # Trains whole runs.
def test_a_diverging_member_stops_alone_and_keeps_its_last_good_checkpoint(members):
  _, workdirs, outcomes = members
  assert "NaN/Inf" in outcomes[0].error and "learning_rate" in outcomes[0].error
  saved = checkpoints.Checkpointer(workdirs[0], read_only=True).steps()
  assert not saved or max(saved) < tiny_config().num_train_steps


@pytest.mark.slow  # Trains whole runs.
def test_members_at_different_steps_resume_in_separate_groups(members, tmp_path, caplog):
  # Two copies of the tiny member, rolled back to steps 10 and 20: two groups, one call.
  configs, workdirs, _ = members
  before = final_params(workdirs[1])[1]
  copies = [rolled_back_copy(workdirs[1], str(tmp_path / f"from{step}"), step) for step in (10, 20)]
  with caplog.at_level(logging.INFO):
    outcomes = train.train_and_evaluate_many([configs[1], configs[1]], copies)
  assert "1 member(s) resume from step 10" in caplog.text and "1 member(s) resume from step 20" in caplog.text
  assert [o.error for o in outcomes] == [None, None]
  for copy in copies:
    assert_params_close(final_params(copy)[1], before)


def test_program_key_ignores_only_seed_and_optimizer_hyperparameters():
  key = train.program_key(tiny_config())
  assert train.program_key(tiny_config(seed=3, learning_rate=0.1, b1=0.5, b2=0.9, eps=1e-3)) == key
  assert train.program_key(tiny_config(batch_size=50)) != key
  assert train.program_key(tiny_config(**{"model.dense_features": 64})) != key
