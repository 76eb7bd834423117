"""The filters of a patch-whitening stem, computed from training images (airbench's first layer).

The stem's k×k filters are the eigenvectors of the images' k×k patch covariance, each scaled by
1/sqrt(eigenvalue + eps), and their negatives: after it, every patch direction has unit variance
(the positive and negative halves survive a relu/gelu). They are fixed; only the bias trains.
"""

import jax
import jax.numpy as jnp

STEM = "whiten"  # The stem module's name: its parameters are params[STEM] ("kernel", "bias").
CHUNK = 1000  # Images per covariance partial sum: bounds the patches held at once (memory only).


def num_filters(kernel_size: int, channels: int) -> int:
  """Output channels of a whitening stem: every patch direction, and its negative."""
  return 2 * kernel_size * kernel_size * channels


def patch_whitening(images: jnp.ndarray, kernel_size: int, eps: float) -> jnp.ndarray:
  """A conv kernel [k, k, C, 2k²C] from float images [N, H, W, C]: the whitening directions of their
  k×k patches (uncentered covariance; strongest direction first), then the same negated. The
  images are summed in N // CHUNK equal chunks: the last N mod (N // CHUNK) are left out (none of
  the 60,000 training images)."""
  n, _, _, c = images.shape
  k = kernel_size
  chunks = max(n // CHUNK, 1)
  images = images[:chunks * (n // chunks)].reshape(chunks, n // chunks, *images.shape[1:])

  def partial_sum(chunk):
    patches = jax.lax.conv_general_dilated_patches(  # [n, h', w', C*k*k], features channel-major.
        chunk, (k, k), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    patches = patches.reshape(-1, patches.shape[-1])
    return patches.T @ patches, patches.shape[0]

  sums, counts = jax.lax.map(partial_sum, images)
  covariance = sums.sum(0) / counts.sum()
  eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)  # Ascending.
  filters = (eigenvectors / jnp.sqrt(eigenvalues + eps))[:, ::-1]  # [C*k*k, k*k*C], strongest first.
  kernel = filters.reshape(c, k, k, -1).transpose(1, 2, 0, 3)  # Patch features (c, i, j) -> HWIO.
  return jnp.concatenate([kernel, -kernel], axis=-1)
