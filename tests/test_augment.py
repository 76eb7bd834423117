"""On-device augmentation: each does what it says on known images, is a pure function of its key,
and a config with everything off leaves the training step as it was."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax import augment
from fmnist_jax import run_folder

KEY = jax.random.PRNGKey(7)
N = 64


def ramp_images():
  """Images [N, 28, 28, 1] whose pixels are all distinct and nonzero (value = 1 + row * 28 + column)."""
  image = (1 + jnp.arange(28 * 28, dtype=jnp.float32)).reshape(28, 28, 1)
  return jnp.broadcast_to(image, (N, 28, 28, 1))


def test_flip_mirrors_about_half_of_the_images_and_leaves_the_rest():
  images = ramp_images()
  out = np.asarray(augment.random_flip(KEY, images))
  mirrored = np.all(out == np.asarray(images)[:, :, ::-1], axis=(1, 2, 3))
  unchanged = np.all(out == np.asarray(images), axis=(1, 2, 3))
  assert np.all(mirrored ^ unchanged)
  assert 0.25 < mirrored.mean() < 0.75


def test_translation_shifts_content_by_the_drawn_offset_with_zero_fill():
  images, pixels = ramp_images(), 3
  out = np.asarray(augment.random_translate(KEY, images, pixels))[..., 0]
  original = np.asarray(images)[0, ..., 0]
  offsets = set()
  for image in out:
    y, x = np.argwhere(image == original[10, 10])[0]  # Where the pixel (10, 10) went.
    dy, dx = y - 10, x - 10
    assert abs(dy) <= pixels and abs(dx) <= pixels
    shifted = np.zeros_like(original)
    shifted[max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)] = \
        original[max(-dy, 0):28 - max(dy, 0), max(-dx, 0):28 - max(dx, 0)]
    np.testing.assert_array_equal(image, shifted)
    offsets.add((dy, dx))
  assert len(offsets) > 10  # The offsets vary per image.


@pytest.mark.parametrize("dy, dx", [(-2, 0), (1, 0), (0, -1), (0, 3), (2, -1)])
def test_shift_moves_every_image_by_the_offset_with_zero_fill(dy, dx):
  images = ramp_images()[:2]
  out = np.asarray(augment.shift(images, dy, dx))[..., 0]
  original = np.asarray(images)[0, ..., 0]
  expected = np.zeros_like(original)
  expected[max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)] = \
      original[max(-dy, 0):28 - max(dy, 0), max(-dx, 0):28 - max(dx, 0)]
  for image in out:
    np.testing.assert_array_equal(image, expected)
  assert out[0][10 + dy, 10 + dx] == original[10, 10]  # Down and right are positive.


def test_erasing_fills_one_rectangle_within_the_area_and_aspect_ranges():
  images = jnp.ones((N, 28, 28, 1))
  area, aspect = (0.05, 0.3), (0.5, 2.0)
  out = np.asarray(augment.random_erase(KEY, images, 1.0, area, aspect, fill=0.25))[..., 0]
  for image in out:
    rows, cols = np.nonzero(image == 0.25)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert len(rows) == height * width  # A filled rectangle ...
    assert set(np.unique(image)) == {0.25, 1.0}  # ... and the rest untouched.
    rounding = (height + width + 1) / 2  # Height and width are rounded to whole pixels.
    assert area[0] * 784 - rounding <= height * width <= area[1] * 784 + rounding
    assert aspect[0] - 0.25 <= height / width <= aspect[1] + 0.5
  assert np.all(np.asarray(augment.random_erase(KEY, images, 0.0, area, aspect, 0.0)) == 1.0)
  some = np.asarray(augment.random_erase(KEY, images, 0.5, area, aspect, 0.0))
  assert 0.25 < np.any(some == 0, axis=(1, 2, 3)).mean() < 0.75


def test_augmentation_is_a_pure_function_of_the_key_and_off_is_identity():
  config = run_folder.default_config().augment
  assert not augment.enabled(config)
  images = ramp_images() / 785
  np.testing.assert_array_equal(augment.apply(config, KEY, images), images)
  config.flip, config.translate_pixels, config.erase_probability = True, 2, 0.5
  assert augment.enabled(config)
  first = augment.apply(config, KEY, images)
  np.testing.assert_array_equal(jax.jit(lambda k, x: augment.apply(config, k, x))(KEY, images), first)
  assert not np.array_equal(augment.apply(config, jax.random.PRNGKey(8), images), first)
  # Each image is augmented independently: its result changes when only another image's key would.
  assert len({np.asarray(x).tobytes() for x in first}) > N // 2


@pytest.mark.parametrize("field, value", [("flip", True), ("translate_pixels", 2), ("erase_probability", 0.5)])
def test_training_step_augments_from_seed_and_step(fmnist, field, value):
  from fmnist_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from fmnist_jax import steps  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{f"augment.{field}": value})
  batch = input_pipeline.gather_batch(fmnist["train"].images, fmnist["train"].labels, jnp.arange(20), 0, 20)
  state = steps.create_train_state(config, jax.random.PRNGKey(0))
  step = jax.jit(lambda s, k: steps.train_step(s, batch, k, config=config)[1].loss.compute())
  plain = steps.train_step(state, batch, steps.derive_keys(0)[2], config=tiny_config())[1].loss.compute()
  loss = step(state, steps.derive_keys(0)[2])
  assert float(loss) == float(step(state, steps.derive_keys(0)[2]))  # Same (seed, step), same images.
  assert float(loss) != float(plain)  # Augmented.
  assert float(step(state.replace(step=state.step + 1), steps.derive_keys(0)[2])) != float(loss)  # Other step.


def test_alternating_flip_mirrors_each_image_in_exactly_every_other_epoch():
  images = ramp_images()
  indices = jnp.arange(1000, 1000 + N)
  mirror = np.asarray(images)[:, :, ::-1]
  mirrored = []
  for epoch in range(4):
    out = np.asarray(augment.alternating_flip(KEY, images, indices, epoch))
    m = np.all(out == mirror, axis=(1, 2, 3))
    assert np.all(m ^ np.all(out == np.asarray(images), axis=(1, 2, 3)))  # Each image mirrored or unchanged.
    mirrored.append(m)
  assert 0.25 < mirrored[0].mean() < 0.75  # Epoch 0: a coin per image.
  np.testing.assert_array_equal(mirrored[1], ~mirrored[0])  # Odd epochs mirror exactly the others.
  np.testing.assert_array_equal(mirrored[2], mirrored[0])
  np.testing.assert_array_equal(mirrored[3], mirrored[1])
  # The coin belongs to the image's dataset index, not to its place in the batch.
  order = np.random.RandomState(0).permutation(N)
  out = np.asarray(augment.alternating_flip(KEY, images[order], indices[order], 5))
  np.testing.assert_array_equal(np.all(out == mirror[order], axis=(1, 2, 3)), mirrored[1][order])


def test_training_steps_give_alternating_flip_the_batch_indices_and_the_epoch(monkeypatch):
  import functools

  from fmnist_jax import parallel
  from fmnist_jax import steps
  from tests.conftest import tiny_config
  config = tiny_config(**{"augment.alternate_flip": True, "batch_size": 10})
  seen = []

  def record(key, images, indices, epoch):
    if not isinstance(indices, jax.core.Tracer):  # The first step runs eagerly; the loop's body is traced.
      seen.append((np.asarray(indices), int(epoch)))
    return images

  monkeypatch.setattr(augment, "alternating_flip", record)
  state = steps.create_train_state(config, jax.random.PRNGKey(0))
  images = jnp.zeros((50, 28, 28, 1), jnp.uint8)  # 5 steps per epoch.
  labels = jnp.zeros((50,), jnp.int32)
  perm = jnp.arange(50)[::-1]
  train_steps = functools.partial(steps.train_steps, config=config, mesh=parallel.make_mesh())
  train_steps(state, images, labels, perm, steps.derive_keys(0)[2], 2, 1)
  train_steps(state.replace(step=7), images, labels, perm, steps.derive_keys(0)[2], 2, 1)
  (indices0, epoch0), (indices1, epoch1) = seen
  np.testing.assert_array_equal(indices0, np.arange(50)[::-1][20:30])
  np.testing.assert_array_equal(indices1, indices0)
  assert (epoch0, epoch1) == (0, 1)


@pytest.mark.slow
def test_alternating_flip_resumes_bitwise_across_an_epoch_and_vmaps_like_a_single_run(tmp_path):
  from fmnist_jax import train
  from tests.conftest import assert_resume_across_an_epoch_is_bitwise, final_params, tiny_config
  from tests.test_ensemble import assert_params_close
  straight = assert_resume_across_an_epoch_is_bitwise(tmp_path, **{"augment.alternate_flip": True})
  args = {"augment.alternate_flip": True, "batch_size": 2000, "num_train_steps": 40, "checkpoint_every_steps": 10}
  members = [str(tmp_path / "member0"), str(tmp_path / "member1")]
  train.train_and_evaluate_many([tiny_config(**args), tiny_config(seed=1, **args)], members)
  assert_params_close(final_params(members[0])[1], final_params(straight)[1])
