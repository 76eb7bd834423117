"""Model state: BatchNorm statistics and an EMA of the parameters train, checkpoint, resume bit for
bit, vmap and shard like the parameters; dropout and augmentation draw from (seed, step); predict
and evaluate use them. The runs are experiments/resnet_smoke.py (a tiny ResNet, every recipe on)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import resnet_smoke
from fmnist_jax import augment
from fmnist_jax import checkpoints
from fmnist_jax import errors
from fmnist_jax import evaluate
from fmnist_jax import inference
from fmnist_jax import input_pipeline
from fmnist_jax import model_families
from fmnist_jax import models
from fmnist_jax import predict
from fmnist_jax import run_folder
from fmnist_jax import steps
from fmnist_jax import train
from tests.conftest import data_dir, rolled_back_copy, run_module, with_overrides
from tests.test_ensemble import METRIC_ATOL
from tests.test_reliability import assert_bitwise_equal

STEPS = resnet_smoke.get_config().num_train_steps


def smoke_config(**overrides):
  config = resnet_smoke.get_config()
  config.data.idx_dirs = (data_dir(),)
  return with_overrides(config, overrides)


def final_state(workdir):
  config = run_folder.load_config(workdir)
  abstract = jax.eval_shape(functools.partial(steps.create_train_state, config), jax.random.PRNGKey(0))
  return checkpoints.Checkpointer(workdir, read_only=True).restore_latest(abstract)


def assert_close(a, b, rtol=2e-4, atol=1e-4):
  """Equal up to float32 reordering (vmapped or sharded sums) amplified over the steps."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """(workdir, final metrics) of experiments/resnet_smoke.py trained without interruption."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  return workdir, train.train_and_evaluate(smoke_config(), workdir)


def batch_of(fmnist, n=32):
  return input_pipeline.gather_batch(fmnist["train"].images, fmnist["train"].labels, jnp.arange(n), 0, n)


def test_batch_statistics_change_in_training_and_not_in_evaluation(fmnist):
  config = smoke_config()
  state = steps.create_train_state(config, jax.random.PRNGKey(0))
  assert state.batch_stats is not None and state.ema_params is not None
  batch = batch_of(fmnist)
  trained, _ = jax.jit(functools.partial(steps.train_step, config=config))(state, batch, steps.derive_keys(0)[2])
  for before, after in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(trained.batch_stats)):
    assert not np.array_equal(before, after)
  variables = {"params": trained.params, "batch_stats": trained.batch_stats}
  _, updates = trained.apply_fn(variables, batch["image"], train=False, mutable=["batch_stats"])
  for before, after in zip(jax.tree.leaves(trained.batch_stats), jax.tree.leaves(updates["batch_stats"])):
    np.testing.assert_array_equal(before, after)
  eval_batch = {**batch, "mask": np.ones(len(batch["label"]), bool)}
  tta = inference.TTA(flip=True, shift_pixels=1)
  evaluated = jax.jit(functools.partial(steps.eval_step, tta=tta))(trained, eval_batch).compute()
  # The same numbers by hand: the EMA weights with the EMA statistics, logits averaged over the views.
  ema = {"params": trained.ema_params, "batch_stats": trained.ema_batch_stats}
  logits = np.mean([trained.apply_fn(ema, view, train=False) for view in inference.tta_views(batch["image"], tta)], 0)
  labels = np.asarray(batch["label"])
  shifted = logits - logits.max(1, keepdims=True)
  log_probabilities = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
  assert float(evaluated["accuracy"]) == pytest.approx(np.mean(logits.argmax(1) == labels))
  assert float(evaluated["loss"]) == pytest.approx(-np.mean(log_probabilities[np.arange(len(labels)), labels]),
                                                   rel=1e-5)


@pytest.mark.parametrize("flip, shift_pixels, num_views",
                         [(False, 0, 1), (True, 0, 2), (False, 2, 9), (True, 1, 10), (True, 2, 18)])
def test_tta_averages_the_logits_of_the_image_its_shifts_and_mirrors(flip, shift_pixels, num_views):
  images = jax.random.uniform(jax.random.PRNGKey(3), (4, 28, 28, 1))
  weights = jax.random.normal(jax.random.PRNGKey(4), (28 * 28, 10))

  def apply_fn(variables, x, train):  # A linear model: the mean of the views' logits is that of the views.
    assert not train
    return x.reshape(len(x), -1) @ variables["params"]

  tta = inference.TTA(flip=flip, shift_pixels=shift_pixels)
  views = inference.tta_views(images, tta)
  assert len(views) == num_views
  np.testing.assert_array_equal(views[0], images)
  expected = [images]
  for d in range(1, shift_pixels + 1):  # Every shift by 1..shift_pixels pixels along each axis.
    expected += [augment.shift(images, dy, dx) for dy, dx in ((-d, 0), (d, 0), (0, -d), (0, d))]
  for view in expected:  # Each expected view is among the views, and so is its mirror when flipping.
    assert any(np.array_equal(view, v) for v in views)
    assert flip == any(np.array_equal(view[:, :, ::-1], v) for v in views)
  logits = inference.inference_logits(apply_fn, {"params": weights}, images, tta)
  np.testing.assert_allclose(logits, np.mean([apply_fn({"params": weights}, v, False) for v in views], 0), rtol=1e-5)
  if num_views > 1:
    assert not np.allclose(logits, apply_fn({"params": weights}, images, False))


def test_dropout_draws_from_seed_and_step(fmnist):
  config = smoke_config(**{"augment.flip": False, "augment.translate_pixels": 0, "augment.erase_probability": 0.0})
  state, batch = steps.create_train_state(config, jax.random.PRNGKey(0)), batch_of(fmnist)
  step = jax.jit(lambda s, k: steps.train_step(s, batch, k, config=config)[1].loss.compute())
  key = steps.derive_keys(0)[2]
  loss = float(step(state, key))
  assert float(step(state, key)) == loss
  assert float(step(state.replace(step=state.step + 1), key)) != loss
  assert float(step(state, steps.derive_keys(1)[2])) != loss
  config.model.dropout_rate = 0.0
  state = steps.create_train_state(config, jax.random.PRNGKey(0))
  no_dropout = jax.jit(lambda s, k: steps.train_step(s, batch, k, config=config)[1].loss.compute())
  assert float(no_dropout(state, key)) == float(no_dropout(state.replace(step=state.step + 1), key))


def test_ema_is_the_bias_corrected_average_of_the_parameters_and_statistics(fmnist):
  config = smoke_config(ema_decay=0.5)
  state = steps.create_train_state(config, jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(steps.train_step, batch=batch_of(fmnist), step_key=steps.derive_keys(0)[2],
                                   config=config))
  one, _ = step(state)
  two, _ = step(one)
  for ema, live in (("ema_params", "params"), ("ema_batch_stats", "batch_stats")):
    assert_close(getattr(one, ema), getattr(one, live))  # Step 1: the initial values carry no weight.
    # Weights 0.5 ** (2 - i) over steps i = 1, 2, normalized: 1/3 and 2/3.
    expected = jax.tree.map(lambda a, b: a / 3 + 2 * b / 3, getattr(one, live), getattr(two, live))
    assert_close(getattr(two, ema), expected)
    assert not np.allclose(jax.tree.leaves(getattr(two, ema))[0], jax.tree.leaves(getattr(two, live))[0])


def test_evaluation_applies_the_averaged_statistics_with_the_averaged_weights():
  params, stats, ema_params, ema_stats = ({"w": np.full(2, i, np.float32)} for i in range(4))
  live = inference.inference_variables(params, stats)
  assert live["params"] is params and live["batch_stats"] is stats
  averaged = inference.inference_variables(params, stats, ema_params, ema_stats)
  assert averaged["params"] is ema_params and averaged["batch_stats"] is ema_stats
  assert set(inference.inference_variables(params, None, ema_params)) == {"params"}


def test_wide_resnet_16_4_has_the_published_size():
  config = smoke_config()
  config.model = model_families.resnet_config()
  config.model.stage_features, config.model.blocks_per_stage = (64, 128, 256), (2, 2, 2)
  params = jax.eval_shape(models.create_model(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  count = sum(np.prod(x.shape) for x in jax.tree.leaves(params["params"]))
  assert count == pytest.approx(2.75e6, rel=0.01)  # Zagoruyko & Komodakis: WRN-16-4, 2.7M (CIFAR-10).


@pytest.mark.parametrize("strides, sizes", [((1, 2), (28, 14)), ((2, 2), (14, 7)), ((2, 1), (14, 14))])
def test_each_stage_first_block_strides_by_its_stage_stride(strides, sizes):
  config = smoke_config(**{"model.stage_strides": strides})
  model = models.create_model(config)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
  _, captured = model.apply(variables, jnp.zeros((2, 28, 28, 1)), capture_intermediates=True)
  blocks = [captured["intermediates"][f"ResidualBlock_{i}"]["__call__"][0] for i in range(2)]
  assert [b.shape[1:3] for b in blocks] == [(size, size) for size in sizes]
  # A stride, like a change of width, puts a 1x1 projection on the shortcut; an identity needs none.
  has_projection = ["Conv_2" in variables["params"][f"ResidualBlock_{i}"] for i in range(2)]
  assert has_projection == [strides[0] != 1 or config.model.stem_features != config.model.stage_features[0], True]


@pytest.mark.slow
def test_stop_and_resume_with_every_recipe_on_equals_straight_training_bitwise(straight, tmp_path):
  workdir = rolled_back_copy(straight[0], str(tmp_path / "resumed"), STEPS // 2)
  assert set(os.listdir(os.path.join(workdir, "checkpoints", str(STEPS // 2)))) >= {"params", "train", "model_state"}
  resumed = train.train_and_evaluate(smoke_config(), workdir)
  (step_a, a), (step_b, b) = final_state(straight[0]), final_state(workdir)
  assert step_a == step_b == STEPS
  assert_bitwise_equal(a, b)
  assert set(checkpoints.model_state(a)) == {"batch_stats", "ema_params", "ema_batch_stats"}
  for x, y in zip(jax.tree.leaves(checkpoints.model_state(a)), jax.tree.leaves(checkpoints.model_state(b))):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
  assert resumed == straight[1]


def test_a_resnet_saved_before_stage_strides_resumes_with_the_strides_it_trained_with(tmp_path):
  saved = smoke_config()
  del saved.model.stage_strides
  run_folder.save_config(saved, str(tmp_path))
  assert tuple(run_folder.load_config(str(tmp_path)).model.stage_strides) == (1, 2)
  run_folder.check_resume(smoke_config(), str(tmp_path))  # Raises on any difference outside RESUME_SAFE.
  with pytest.raises(errors.CheckpointError, match=r"model.stage_strides=\[1, 2\]"):
    run_folder.check_resume(smoke_config(**{"model.stage_strides": (2, 2)}), str(tmp_path))


@pytest.mark.slow
def test_a_resnet_run_folder_holds_only_resnet_model_fields_and_refuses_other_widths(straight):
  workdir, _ = straight
  with open(run_folder.config_path(workdir)) as f:
    assert json.load(f)["model"] == json.loads(smoke_config().model.to_json())
  assert json.loads(run_folder.load_config(workdir).model.to_json()) == json.loads(smoke_config().model.to_json())
  run_folder.check_resume(smoke_config(), workdir)
  with pytest.raises(errors.CheckpointError, match=r"model.stage_features=\[4, 8\]"):
    run_folder.check_resume(smoke_config(**{"model.stage_features": (4, 16)}), workdir)


@pytest.mark.slow
def test_predict_and_evaluate_use_batch_statistics_ema_and_tta(straight, fmnist):
  workdir, final = straight
  step, state = final_state(workdir)
  predictor = predict.Predictor(workdir)
  assert predictor.step == step
  for x, y in zip(jax.tree.leaves(predictor.variables),
                  jax.tree.leaves({"params": state.ema_params, "batch_stats": state.ema_batch_stats})):
    np.testing.assert_array_equal(x, y)
  test = fmnist["test"]
  probabilities = predictor.probabilities(test.images.astype(np.float32) / 255.0)
  assert np.mean(probabilities.argmax(1) == test.labels) == pytest.approx(final["accuracy"], abs=METRIC_ATOL)
  evaluation = evaluate.evaluate_workdir(workdir)
  assert evaluation.metrics["accuracy"] == pytest.approx(final["accuracy"], abs=1e-6)
  assert evaluation.metrics["loss"] == pytest.approx(final["loss"], rel=1e-5)


@pytest.mark.slow
def test_vmapped_members_with_batch_norm_equal_single_runs(straight, tmp_path):
  workdirs = [str(tmp_path / "seed1"), str(tmp_path / "seed0")]
  outcomes = train.train_and_evaluate_many([smoke_config(seed=1, learning_rate=0.02), smoke_config()], workdirs)
  _, member = final_state(workdirs[1])
  _, single = final_state(straight[0])
  assert_close((member.params, member.batch_stats, member.ema_params),
               (single.params, single.batch_stats, single.ema_params))
  assert outcomes[1].metrics["accuracy"] == pytest.approx(straight[1]["accuracy"], abs=METRIC_ATOL)
  _, other = final_state(workdirs[0])
  assert not np.allclose(jax.tree.leaves(other.batch_stats)[0], jax.tree.leaves(member.batch_stats)[0])


EIGHT_DEVICE_SCRIPT = """
import json, sys
import jax
from fmnist_jax import train
from tests.test_recipes import smoke_config
print(json.dumps({"devices": jax.device_count(),
                  "metrics": train.train_and_evaluate(smoke_config(batch_size=96), sys.argv[1])}))
"""


@pytest.mark.slow
def test_eight_devices_train_batch_norm_with_global_statistics_as_one_device(tmp_path):
  r = run_module(["-c", EIGHT_DEVICE_SCRIPT, str(tmp_path / "eight")],
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(r.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8
  metrics = train.train_and_evaluate(smoke_config(batch_size=96), str(tmp_path / "one"))
  abstract = jax.eval_shape(functools.partial(steps.create_train_state, smoke_config()), jax.random.PRNGKey(0))
  eight, one = (checkpoints.Checkpointer(str(tmp_path / name), read_only=True).restore_model(
      abstract.params, checkpoints.model_state(abstract))[1] for name in ("eight", "one"))
  # Eight devices sum in another order than one; over the steps that reached 1.5e-4 on a 2-core CPU.
  # Per-device statistics (a local mean over 12 images) would differ far beyond 1e-3.
  assert_close(eight, one, rtol=1e-3, atol=1e-3)
  assert report["metrics"]["accuracy"] == pytest.approx(metrics["accuracy"], abs=METRIC_ATOL)


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer": "lion"}, "config.optimizer='lion' must be one of ('adam', 'adamw', 'sgd', 'muon')"),
    ({"optimizer": "muon", "adam_learning_rate": 0.0}, "config.adam_learning_rate=0.0 must be > 0"),
    ({"schedule": "step"}, "config.schedule='step' must be one of"),
    ({"weight_decay": 0.1}, "config.weight_decay=0.1 needs config.optimizer='adamw', 'sgd' or 'muon'"),
    ({"warmup_fraction": 1.5}, "config.warmup_fraction=1.5 must be a number in [0.0, 1.0]"),
    ({"ema_decay": 1.0}, "config.ema_decay=1.0 must be a number in [0, 1)"),
    ({"augment.translate_pixels": -1}, "config.augment.translate_pixels=-1 must be an integer in [0, 27]"),
    ({"augment.alternate_flip": True}, "config.augment.alternate_flip=True replaces the random mirror"),
    ({"eval_tta_shift_pixels": 28}, "config.eval_tta_shift_pixels=28 must be an integer in [0, 27]"),
    ({"augment.erase_area": (0.5, 0.1)}, "config.augment.erase_area=(0.5, 0.1) must be (low, high)"),
    ({"model.name": "vit"}, "config.model.name='vit' must be one of ('cnn', 'resnet')"),
    ({"model.blocks_per_stage": (1,)}, "config.model.blocks_per_stage=(1,) needs one count per stage"),
    ({"model.stage_strides": (1, 2, 2)}, "config.model.stage_strides=(1, 2, 2) needs one stride per stage"),
    ({"model.stage_strides": (0, 2)}, "config.model.stage_strides=(0, 2) must be a non-empty tuple of positive"),
])
def test_bad_recipe_fields_are_one_line_errors(overrides, message):
  from fmnist_jax import config_checks  # pylint: disable=g-import-not-at-top
  config = smoke_config(**{"optimizer": "adam", "weight_decay": 0.0, **overrides})
  with pytest.raises(errors.ConfigError) as raised:
    config_checks.validate(config, 1)
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
