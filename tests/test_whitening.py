"""airbench's structure in the CNN: a patch-whitening stem with fixed filters, two-conv stages that
pool after their first conv, BatchNorm without a scale. Known values, exact filters, frozen filters,
resume, vmap and several devices."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax import config_checks
from fmnist_jax import errors
from fmnist_jax import evaluate
from fmnist_jax import input_pipeline
from fmnist_jax import models
from fmnist_jax import steps
from fmnist_jax import train
from fmnist_jax import whitening
from tests.conftest import assert_resume_across_an_epoch_is_bitwise, final_params, run_module, tiny_config
from tests.test_ensemble import assert_params_close
from tests.test_recipes import assert_close

AIRBENCH = {"model.whiten_kernel_size": 2, "model.convs_per_stage": 2, "model.batch_norm": True,
            "model.batch_norm_scale": False}


def _stem_outputs(images, kernel):
  """The stem's outputs [N*H'*W', filters] on uint8 images, read as the model reads them ([0, 1])."""
  x = input_pipeline.to_float(jnp.asarray(images))
  out = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return out.reshape(-1, out.shape[-1])


def _correlated_images(n, size, channels, seed=0):
  """uint8 images of correlated pixels and channels (a blurred random field, the second channel
  mixing the first)."""
  noise = np.random.default_rng(seed).random((n, size, size, channels))
  field = (noise + np.roll(noise, 1, axis=1) + 0.5 * np.roll(noise, 1, axis=2)).cumsum(-1)
  return np.round(255 * field / field.max()).astype(np.uint8)


@pytest.mark.parametrize("kernel_size, channels", [(2, 1), (3, 1), (2, 2)])
def test_the_stem_makes_the_patches_unit_variance_and_uncorrelated(kernel_size, channels):
  images = _correlated_images(1200, 12, channels)
  kernel = whitening.patch_whitening(images, kernel_size, eps=1e-9)
  n = whitening.num_filters(kernel_size, channels)
  assert kernel.shape == whitening.kernel_shape(kernel_size, channels) == (kernel_size, kernel_size, channels, n)
  out = _stem_outputs(images, kernel)
  half = out[:, :n // 2]
  np.testing.assert_allclose(half.T @ half / half.shape[0], np.eye(n // 2), atol=2e-3)
  np.testing.assert_array_equal(out[:, n // 2:], -half)
  # Strongest direction first: eps makes the weakest directions' filters smaller, never the strongest.
  damped = _stem_outputs(images, whitening.patch_whitening(images, kernel_size, eps=1.0))[:, :n // 2]
  variances = np.asarray((damped ** 2).mean(0))
  assert np.all(np.diff(variances) <= 1e-6) and variances[-1] < 0.5 * variances[0]
  # whiten_directions keeps the strongest directions, unchanged.
  strongest = whitening.patch_whitening(images, kernel_size, eps=1e-9, directions=2)
  assert strongest.shape == whitening.kernel_shape(kernel_size, channels, 2) == (kernel_size, kernel_size, channels, 4)
  np.testing.assert_array_equal(strongest, np.concatenate([kernel[..., :2], kernel[..., n // 2:n // 2 + 2]], -1))


def test_the_patch_sums_are_exact_so_the_filters_do_not_depend_on_the_order_of_the_images():
  images = np.random.default_rng(2).integers(0, 256, (2 * whitening.CHUNK + 7, 9, 8, 1), dtype=np.uint8)
  k = 3
  patches = np.concatenate([images[:, i:i + 7, j:j + 6].astype(np.int64) for i in range(k) for j in range(k)], -1)
  patches = patches.reshape(-1, k * k)
  # Every image counted (the last, partial chunk too), every product summed without rounding.
  np.testing.assert_array_equal(np.asarray(whitening.patch_products(images, k)).astype(np.int64).sum(0),
                                patches.T @ patches)
  shuffled = images[np.random.default_rng(3).permutation(len(images))]  # Other chunks, other sum orders.
  np.testing.assert_array_equal(whitening.patch_whitening(shuffled, k, 5e-4),
                                whitening.patch_whitening(images, k, 5e-4))
  with pytest.raises(TypeError, match="uint8"):
    whitening.patch_whitening(images.astype(np.float32), k, 5e-4)


@pytest.fixture(scope="module")
def fmnist():
  return input_pipeline.load_dataset(tiny_config().data)


def test_a_fresh_state_holds_the_training_images_whitening_and_training_never_moves_it(fmnist):
  config = tiny_config(optimizer="muon", weight_decay=0.1, **AIRBENCH)
  expected = whitening.patch_whitening(fmnist["train"].images, 2, config.model.whiten_eps)
  state = steps.create_train_state(config, jax.random.PRNGKey(0), steps.stem_kernel(config, fmnist["train"].images))
  np.testing.assert_array_equal(state.params["whiten"]["kernel"], expected)
  with pytest.raises(ValueError, match="needs its filters"):
    steps.init_variables(config, jax.random.PRNGKey(0))
  step = jax.jit(lambda s, b: steps.train_step(s, b, jax.random.PRNGKey(2), config=config))
  batch = input_pipeline.gather_batch(fmnist["train"].images, fmnist["train"].labels, jnp.arange(64), 0, 64)
  new, _ = step(*step(state, batch)[:1], batch)
  np.testing.assert_array_equal(new.params["whiten"]["kernel"], expected)  # Fixed, weight decay or not.
  assert not np.array_equal(new.params["whiten"]["bias"], state.params["whiten"]["bias"])
  assert not np.array_equal(new.params["Conv_0"]["kernel"], state.params["Conv_0"]["kernel"])


def test_two_conv_stages_pool_after_their_first_conv_and_batch_norm_has_no_scale():
  config = tiny_config(**AIRBENCH)  # conv_features (8, 16); images 28 -> stem 27 -> 13 -> 6.
  model = models.create_model(config)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  _, state = model.apply(variables, jnp.zeros((2, 28, 28, 1)), train=True, capture_intermediates=True,
                         mutable=["batch_stats", "intermediates"])
  sizes = {name: out["__call__"][0].shape[1:] for name, out in state["intermediates"].items() if name != "__call__"}
  assert {k: v for k, v in sizes.items() if k.startswith(("whiten", "Conv"))} == {
      "whiten": (27, 27, 8), "Conv_0": (27, 27, 8), "Conv_1": (13, 13, 8), "Conv_2": (13, 13, 16),
      "Conv_3": (6, 6, 16)}
  assert variables["params"]["Dense_0"]["kernel"].shape == (6 * 6 * 16, 32)
  assert all(set(bn) == {"bias"} for name, bn in variables["params"].items() if name.startswith("BatchNorm"))
  assert len([n for n in variables["params"] if n.startswith("BatchNorm")]) == 4


@pytest.mark.parametrize("overrides, message", [
    ({"model.whiten_kernel_size": -1}, "config.model.whiten_kernel_size=-1 must be 0 (no whitening stem)"),
    ({"model.whiten_kernel_size": 29}, "config.model.whiten_kernel_size=29 must be 0"),
    ({"model.whiten_eps": 0.0}, "config.model.whiten_eps=0.0 must be > 0"),
    ({"model.whiten_kernel_size": 2, "model.whiten_directions": 5},
     "config.model.whiten_directions=5 must be 0 (all) or between 1 and the 4 directions"),
    ({"model.convs_per_stage": 0}, "config.model.convs_per_stage=0 must be a positive integer"),
    ({"model.whiten_kernel_size": 14, "model.conv_features": (8, 16, 32, 64)},  # 28 would leave one pixel.
     "config.model.pool_size=(2, 2) after each of the 4 convs leaves no pixel"),
])
def test_bad_airbench_fields_are_one_line_errors(overrides, message):
  config = tiny_config(**overrides)
  with pytest.raises(errors.ConfigError) as raised:
    config_checks.validate(config, 1)
  assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


@pytest.mark.slow
def test_whitened_runs_resume_bitwise_vmap_like_single_runs_and_evaluate_from_the_folder(tmp_path):
  straight = assert_resume_across_an_epoch_is_bitwise(tmp_path, **AIRBENCH)
  args = {**AIRBENCH, "batch_size": 2000, "num_train_steps": 40, "checkpoint_every_steps": 10}
  members = [str(tmp_path / "member0"), str(tmp_path / "member1")]
  outcomes = train.train_and_evaluate_many([tiny_config(**args), tiny_config(seed=1, **args)], members)
  # BatchNorm statistics and Muon's orthogonalization amplify the vmapped sums' float32 reordering
  # (2.9e-4 measured); the other seed's parameters differ by ~1e-2.
  assert_close(final_params(members[0])[1], final_params(straight)[1], rtol=1e-3, atol=1e-3)
  # Both members share the data's filters, whatever their seeds.
  np.testing.assert_array_equal(final_params(members[1])[1]["whiten"]["kernel"],
                                final_params(straight)[1]["whiten"]["kernel"])
  evaluation = evaluate.evaluate_workdir(members[0])  # Restores without the training images.
  assert evaluation.metrics["accuracy"] == pytest.approx(outcomes[0].metrics["accuracy"], abs=1e-6)



EIGHT_DEVICE_SCRIPT = """
import json, sys
import jax
from fmnist_jax import train
from tests.conftest import tiny_config
from tests.test_whitening import AIRBENCH
print(json.dumps({"devices": jax.device_count(),
                  "metrics": train.train_and_evaluate(tiny_config(batch_size=96, **AIRBENCH), sys.argv[1])}))
"""


@pytest.mark.slow
def test_eight_devices_train_a_whitened_network_as_one_device(tmp_path):
  r = run_module(["-c", EIGHT_DEVICE_SCRIPT, str(tmp_path / "eight")],
                 env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])["devices"] == 8
  train.train_and_evaluate(tiny_config(batch_size=96, **AIRBENCH), str(tmp_path / "one"))
  eight, one = final_params(str(tmp_path / "eight"))[1], final_params(str(tmp_path / "one"))[1]
  np.testing.assert_array_equal(eight[whitening.STEM]["kernel"], one[whitening.STEM]["kernel"])  # Exact sums.
  assert_params_close(eight, one)
