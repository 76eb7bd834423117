"""Optimizers and schedules: the base config is today's Adam exactly; schedules scale a peak rate
that stays in the optimizer state, so rate sweeps share one compiled program."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fmnist_jax import optimizers
from fmnist_jax import steps
from tests.conftest import rolled_back_copy, tiny_config

PARAMS = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
GRADS = {"Dense_0": {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.full((2,), 0.5)}}


def test_base_optimizer_is_inject_hyperparams_adam_state_and_updates_bitwise():
  config = tiny_config()
  tx = optimizers.create(config, 100)
  seed = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8)
  state, seed_state = tx.init(PARAMS), seed.init(PARAMS)
  assert jax.tree.structure(state) == jax.tree.structure(seed_state)
  for _ in range(3):
    (updates, state), (seed_updates, seed_state) = tx.update(GRADS, state), seed.update(GRADS, seed_state)
    for a, b in zip(jax.tree.leaves((updates, state)), jax.tree.leaves((seed_updates, seed_state))):
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("schedule, expected", [
    # 100 steps, warmup 20 (0.2), from 0.1 of the peak to 0.0.
    ("constant", {0: 1.0, 10: 1.0, 99: 1.0}),
    ("warmup_linear", {0: 0.1, 10: 0.55, 20: 1.0, 60: 0.5, 100: 0.0}),
    ("warmup_cosine", {0: 0.1, 10: 0.55, 20: 1.0, 60: 0.5, 100: 0.0}),
    ("one_cycle", {0: 0.1, 10: 0.55, 20: 1.0, 60: 0.5, 100: 0.0, 5: 0.1 + 0.9 * (1 - np.cos(np.pi / 4)) / 2}),
])
def test_schedules_give_known_factors_at_known_steps(schedule, expected):
  config = tiny_config(schedule=schedule, warmup_fraction=0.2, lr_start_factor=0.1, lr_end_factor=0.0)
  factor = optimizers.schedule_factor(config, 100) or (lambda count: 1.0)
  for count, value in expected.items():
    assert float(factor(count)) == pytest.approx(value, abs=1e-6), count
  if schedule == "warmup_cosine":
    assert float(factor(40)) == pytest.approx((1 + np.cos(np.pi / 4)) / 2, abs=1e-6)  # Cosine, not linear.


def test_sgd_update_is_minus_peak_rate_times_schedule_times_gradient():
  config = tiny_config(optimizer="sgd", momentum=0.0, learning_rate=0.1, schedule="warmup_linear",
                       warmup_fraction=0.5, lr_start_factor=0.2, lr_end_factor=0.0)
  tx = optimizers.create(config, 10)
  state = tx.init(PARAMS)
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1)  # The peak lives in the state.
  for count, factor in enumerate((0.2, 0.36, 0.52)):  # Linear from 0.2 to 1 over 5 steps.
    updates, state = tx.update(GRADS, state, PARAMS)
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.1 * factor * 0.5, rtol=1e-6, err_msg=count)


def test_weight_decay_applies_to_kernels_only():
  for optimizer in ("adamw", "sgd"):
    config = tiny_config(optimizer=optimizer, weight_decay=0.5, learning_rate=1.0, momentum=0.0)
    tx = optimizers.create(config, 10)
    zero = jax.tree.map(jnp.zeros_like, GRADS)
    updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.5, rtol=1e-6, err_msg=optimizer)
    np.testing.assert_allclose(updates["Dense_0"]["bias"], 0.0, err_msg=optimizer)


def test_gradient_clipping_bounds_the_update():
  config = tiny_config(optimizer="sgd", momentum=0.0, learning_rate=1.0, grad_clip_norm=0.1)
  tx = optimizers.create(config, 10)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  assert float(optax.tree.norm(updates)) == pytest.approx(0.1, rel=1e-5)


def test_rate_sweep_with_a_schedule_shares_one_compiled_step(fmnist):
  from fmnist_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from fmnist_jax import train  # pylint: disable=g-import-not-at-top
  configs = [tiny_config(optimizer="adamw", weight_decay=wd, learning_rate=lr, schedule="warmup_cosine",
                         warmup_fraction=0.1, lr_start_factor=0.5) for lr, wd in ((1e-3, 1e-4), (3e-3, 1e-2))]
  assert train.program_key(configs[0]) == train.program_key(configs[1])
  batch = input_pipeline.gather_batch(fmnist["train"].images, fmnist["train"].labels, jnp.arange(100), 0, 100)
  step = jax.jit(functools.partial(steps.train_step, step_key=steps.derive_keys(0)[2], config=configs[0]))
  init = steps.create_train_state(configs[0], jax.random.PRNGKey(0))
  results = [step(steps.with_config_hyperparams(init, c), batch)[0] for c in configs]
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert float(results[1].opt_state.hyperparams["weight_decay"]) == pytest.approx(1e-2)
  assert not np.array_equal(results[0].params["Dense_1"]["kernel"], results[1].params["Dense_1"]["kernel"])


def test_label_smoothing_is_the_smoothed_cross_entropy(fmnist):
  from fmnist_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = tiny_config(label_smoothing=0.2)
  batch = input_pipeline.gather_batch(fmnist["train"].images, fmnist["train"].labels, jnp.arange(50), 0, 50)
  state = steps.create_train_state(config, jax.random.PRNGKey(0))
  _, metrics = steps.train_step(state, batch, steps.derive_keys(0)[2], config=config)
  logits = state.apply_fn({"params": state.params}, batch["image"])
  targets = 0.8 * jax.nn.one_hot(batch["label"], 10) + 0.02
  expected = -(targets * jax.nn.log_softmax(logits)).sum(-1).mean()
  assert float(metrics.loss.compute()) == pytest.approx(float(expected), rel=1e-5)


def test_muon_orthogonalizes_kernels_and_gives_the_rest_to_adam_each_at_its_own_rate():
  from fmnist_jax import train  # pylint: disable=g-import-not-at-top
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"Conv_0": {"kernel": jnp.zeros((3, 3, 4, 8))}, "Dense_0": {"kernel": jnp.zeros((12, 6)),
                                                                       "bias": jnp.zeros((6,))}}
  grads = {"Conv_0": {"kernel": jax.random.normal(keys[0], (3, 3, 4, 8))},
           "Dense_0": {"kernel": jax.random.normal(keys[1], (12, 6)), "bias": jax.random.normal(keys[2], (6,))}}

  def first_update(learning_rate, adam_learning_rate):
    config = tiny_config(optimizer="muon", momentum=0.0, learning_rate=learning_rate,
                         adam_learning_rate=adam_learning_rate)
    tx = optimizers.create(config, 10)
    return tx.update(grads, tx.init(params), params)[0], train.program_key(config)

  updates, key = first_update(1.0, 0.01)
  for name, shape in (("Conv_0", (36, 8)), ("Dense_0", (12, 6))):
    # A conv kernel [h, w, in, out] is the matrix [h * w * in, out]; Muon's update is near its
    # orthogonal factor U V^T (Newton-Schulz: singular values near 1, same singular vectors).
    update, grad = -np.asarray(updates[name]["kernel"]).reshape(shape), np.asarray(grads[name]["kernel"]).reshape(shape)
    singular_values = np.linalg.svd(update, compute_uv=False)
    assert singular_values.min() > 0.5 and singular_values.max() < 1.3, (name, singular_values)
    u, _, vt = np.linalg.svd(grad, full_matrices=False)
    cosine = np.sum(update * (u @ vt)) / np.linalg.norm(update) / np.linalg.norm(u @ vt)
    assert cosine > 0.95, (name, cosine)
  assert np.all(np.sign(updates["Dense_0"]["bias"]) == -np.sign(grads["Dense_0"]["bias"]))  # Adam's step.
  # Each rate scales its own group only, and both live in the state (one compiled program).
  doubled_muon, key_muon = first_update(2.0, 0.01)
  doubled_adam, key_adam = first_update(1.0, 0.02)
  np.testing.assert_allclose(doubled_muon["Conv_0"]["kernel"], 2 * updates["Conv_0"]["kernel"], rtol=1e-5)
  np.testing.assert_allclose(doubled_muon["Dense_0"]["bias"], updates["Dense_0"]["bias"], rtol=1e-6)
  np.testing.assert_allclose(doubled_adam["Dense_0"]["bias"], 2 * updates["Dense_0"]["bias"], rtol=1e-5)
  np.testing.assert_allclose(doubled_adam["Dense_0"]["kernel"], updates["Dense_0"]["kernel"], rtol=1e-6)
  assert key == key_muon == key_adam


@pytest.mark.slow  # Trains whole runs.
def test_a_muon_run_checkpoints_and_resumes_bitwise(tmp_path):
  # Muon's state (a partition of Muon and Adam states, masked leaves included) round-trips through
  # the checkpoints: a run stopped at its mid-run checkpoint ends exactly where a straight run does.
  from fmnist_jax import train  # pylint: disable=g-import-not-at-top
  from tests.test_recipes import final_state  # pylint: disable=g-import-not-at-top
  from tests.test_reliability import assert_bitwise_equal  # pylint: disable=g-import-not-at-top
  config = tiny_config(optimizer="muon", learning_rate=0.02, adam_learning_rate=0.002, schedule="warmup_linear",
                       warmup_fraction=0.2, num_train_steps=20, eval_every_steps=20, **{"model.batch_norm": True})
  straight = str(tmp_path / "straight")
  metrics = train.train_and_evaluate(config, straight)
  resumed = rolled_back_copy(straight, str(tmp_path / "resumed"), 10)
  assert train.train_and_evaluate(config, resumed) == metrics
  (step_a, a), (step_b, b) = final_state(straight), final_state(resumed)
  assert step_a == step_b == 20
  assert_bitwise_equal(a, b)
  assert metrics["accuracy"] > 0.5  # It learned (a 20-step tiny CNN; chance is 0.1).
  # Adam's rate (biases, BatchNorm) lives in the optimizer state: a resume may change it and trains on with it.
  changed = rolled_back_copy(straight, str(tmp_path / "changed"), 10)
  faster = config.copy_and_resolve_references()
  faster.adam_learning_rate = 0.02
  train.train_and_evaluate(faster, changed)
  _, c = final_state(changed)
  assert float(c.opt_state.hyperparams["adam_learning_rate"]) == np.float32(0.02)
  assert float(b.opt_state.hyperparams["adam_learning_rate"]) == np.float32(0.002)
  assert not np.array_equal(jax.tree.leaves(c.params)[0], jax.tree.leaves(b.params)[0])
