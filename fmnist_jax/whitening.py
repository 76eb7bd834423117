"""The filters of a patch-whitening stem, computed from training images (airbench's first layer).

The stem's k×k filters are the eigenvectors of the images' k×k patch covariance, each scaled by
1/sqrt(eigenvalue + eps), and their negatives: after it, every patch direction has unit variance
(the positive and negative halves survive a relu/gelu). They are fixed; only the bias trains.

The covariance is summed exactly: the uint8 pixels' products are integers, summed on the device in
groups small enough that every float32 partial sum is an exact integer, then in int32 and on the
host in int64. Its eigenvectors come from float64 on the host. So the filters do not depend on how
a backend orders its sums: one device or eight, CPU or GPU, a run gets the same filters (float32
sums moved the weakest directions by ~1e-5, which training amplified).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

STEM = "whiten"  # The stem module's name: its parameters are params[STEM] ("kernel", "bias").
CHUNK = 1000  # Images per step of the device sum: bounds the patches held at once (memory only).
ROWS = 256  # Patches per float32 product sum: 256 * 255**2 < 2**24, so every partial sum is exact.
GROUPS = 128  # Product sums per int32 sum: 128 * 256 * 255**2 < 2**31.


def num_directions(kernel_size: int, channels: int, directions: int = 0) -> int:
  """The patch directions a stem keeps: `directions`, or all k*k*C where 0."""
  return directions or kernel_size * kernel_size * channels


def num_filters(kernel_size: int, channels: int, directions: int = 0) -> int:
  """Output channels of a whitening stem: each direction kept, and its negative."""
  return 2 * num_directions(kernel_size, channels, directions)


def kernel_shape(kernel_size: int, channels: int, directions: int = 0) -> tuple:
  """The stem's HWIO kernel shape."""
  return (kernel_size, kernel_size, channels, num_filters(kernel_size, channels, directions))


@functools.partial(jax.jit, static_argnums=1)
def patch_products(images: jnp.ndarray, kernel_size: int) -> jnp.ndarray:
  """Exact sums of the products of every two pixels of the k×k patches of uint8 images [N, H, W, C]:
  int32 [G, k²C, k²C] partial sums (features (i, j, c) row-major) whose total is the patches' X^T X."""
  n, h, w, c = images.shape
  k, d = kernel_size, kernel_size * kernel_size * images.shape[-1]
  out_h, out_w = h - k + 1, w - k + 1
  chunk = min(CHUNK, n)
  images = jnp.pad(images, ((0, -n % chunk), (0, 0), (0, 0), (0, 0)))  # Zero images add nothing.

  def chunk_sums(x):
    x = x.astype(jnp.float32)
    patches = jnp.concatenate([x[:, i:i + out_h, j:j + out_w] for i in range(k) for j in range(k)], axis=-1)
    patches = patches.reshape(-1, d)
    patches = jnp.pad(patches, ((0, -patches.shape[0] % (ROWS * GROUPS)), (0, 0))).reshape(-1, ROWS, d)
    sums = jnp.einsum("gri,grj->gij", patches, patches, precision=jax.lax.Precision.HIGHEST)
    return sums.astype(jnp.int32).reshape(-1, GROUPS, d, d).sum(1)

  sums = jax.lax.map(chunk_sums, images.reshape(-1, chunk, h, w, c))
  return sums.reshape(-1, d, d)


def patch_whitening(images, kernel_size: int, eps: float, directions: int = 0) -> np.ndarray:
  """A float32 conv kernel [k, k, C, 2D] from uint8 images [N, H, W, C] (on a device or the host):
  the D strongest whitening directions of their k×k patches in [0, 1] (uncentered covariance;
  strongest first; D = `directions`, 0: all k²C), then the same negated."""
  n, h, w, c = images.shape
  k = kernel_size
  if jnp.dtype(images.dtype) != jnp.uint8:
    raise TypeError(f"patch_whitening sums uint8 pixels exactly, not {images.dtype}")
  products = np.asarray(patch_products(jnp.asarray(images), k)).astype(np.int64).sum(0)
  covariance = products / (255.0 ** 2 * n * (h - k + 1) * (w - k + 1))
  eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # Ascending.
  filters = (eigenvectors / np.sqrt(eigenvalues + eps))[:, ::-1]  # [k*k*C, k*k*C], strongest first.
  filters = filters[:, :num_directions(k, c, directions)]
  kernel = filters.reshape(k, k, c, -1).astype(np.float32)  # Features (i, j, c) row-major: HWIO.
  return np.concatenate([kernel, -kernel], axis=-1)
