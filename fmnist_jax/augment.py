"""Training-time augmentation on the device, inside the compiled step.

Every function is pure in (key, images [N, H, W, C] float): the key is split into one key per
image, so a batch's augmentation depends only on the key (derived from seed and step by the
training step), not on how the batch is sharded, vmapped or resumed.
"""

import math

import jax
import jax.numpy as jnp

COIN_DATA = 0xFFFFFFFF  # fold_in data of the key of alternating_flip's per-image coins: never a step number.


def enabled(config) -> bool:
  """Whether `config.augment` changes any image (decided at trace time: off costs nothing)."""
  return bool(config.flip or config.alternate_flip or config.translate_pixels or config.erase_probability)


def _per_image(fn, key, images):
  return jax.vmap(fn)(jax.random.split(key, images.shape[0]), images)


def random_flip(key, images):
  """Mirrors each image left-right with probability 1/2."""
  def one(k, image):
    return jnp.where(jax.random.bernoulli(k), image[:, ::-1], image)
  return _per_image(one, key, images)


def alternating_flip(key, images, indices, epoch):
  """Mirrors each image in every other epoch: the image of dataset index `indices[i]` is mirrored in
  `epoch` iff its coin (a bernoulli draw from `key` and the index alone, the same every epoch)
  differs from the epoch's parity. Epoch 0 mirrors each image with probability 1/2; each odd epoch
  mirrors exactly the images the even epochs leave."""
  coins = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(key, i)))(indices)
  mirrored = coins != (epoch % 2 == 1)
  return jnp.where(mirrored[:, None, None, None], images[:, :, ::-1], images)


def shift(images, dy: int, dx: int):
  """Every image shifted dy pixels down and dx right (negative: up, left); vacated pixels are 0."""
  h, w = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)))
  return padded[:, abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]


def random_translate(key, images, pixels: int):
  """Shifts each image by (dy, dx), each uniform in [-pixels, pixels]; vacated pixels are 0."""
  h, w = images.shape[1:3]

  def one(k, image):
    padded = jnp.pad(image, ((pixels, pixels), (pixels, pixels), (0, 0)))
    dy, dx = jax.random.randint(k, (2,), -pixels, pixels + 1)
    return jax.lax.dynamic_slice(padded, (pixels - dy, pixels - dx, 0), (h, w, image.shape[2]))
  return _per_image(one, key, images)


def erase_boxes(key, shape, probability: float, area_range, aspect_range):
  """(top, left, height, width, erased) of one rectangle per image (Zhong et al.'s random erasing).

  The area is uniform in `area_range` (fractions of H*W) and height/width log-uniform in
  `aspect_range`, narrowed to the ratios for which that area fits inside the image.
  """
  n, h, w = shape[:3]

  def one(k):
    k_apply, k_area, k_aspect, k_top, k_left = jax.random.split(k, 5)
    area = jax.random.uniform(k_area, (), minval=area_range[0], maxval=area_range[1]) * h * w
    low = jnp.maximum(math.log(aspect_range[0]), jnp.log(area / w ** 2))
    high = jnp.minimum(math.log(aspect_range[1]), jnp.log(h ** 2 / area))
    aspect = jnp.exp(jax.random.uniform(k_aspect, (), minval=low, maxval=jnp.maximum(low, high)))
    height = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, h).astype(jnp.int32)
    width = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, w).astype(jnp.int32)
    top = jax.random.randint(k_top, (), 0, h - height + 1)
    left = jax.random.randint(k_left, (), 0, w - width + 1)
    return top, left, height, width, jax.random.bernoulli(k_apply, probability)
  return jax.vmap(one)(jax.random.split(key, n))


def random_erase(key, images, probability: float, area_range, aspect_range, fill: float):
  """Fills one random rectangle per image with `fill`, for each image with `probability`."""
  top, left, height, width, erased = erase_boxes(key, images.shape, probability, area_range, aspect_range)
  rows = jnp.arange(images.shape[1])[None, :, None]
  cols = jnp.arange(images.shape[2])[None, None, :]
  inside = ((rows >= top[:, None, None]) & (rows < (top + height)[:, None, None])
            & (cols >= left[:, None, None]) & (cols < (left + width)[:, None, None]) & erased[:, None, None])
  return jnp.where(inside[..., None], jnp.asarray(fill, images.dtype), images)


def apply(config, key, images, coin_key=None, indices=None, epoch=None):
  """The augmentations `config` (config.augment) enables, in order flip, translate, erase.
  alternate_flip takes `coin_key`, the images' dataset `indices` and the `epoch` (alternating_flip)."""
  if config.flip:
    images = random_flip(jax.random.fold_in(key, 0), images)
  if config.alternate_flip:
    images = alternating_flip(coin_key, images, indices, epoch)
  if config.translate_pixels:
    images = random_translate(jax.random.fold_in(key, 1), images, config.translate_pixels)
  if config.erase_probability:
    images = random_erase(jax.random.fold_in(key, 2), images, config.erase_probability,
                          tuple(config.erase_area), tuple(config.erase_aspect), config.erase_fill)
  return images
