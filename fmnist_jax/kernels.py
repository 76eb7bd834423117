"""CPU kernels for the models' convolutions and max-pools, chosen by `config.runtime` (`conv_impl`,
`stem_impl`, `pool_impl`; `runtime.resolve` picks them per backend). Each computes the same function with the same
parameters as XLA's own op, so checkpoints are interchangeable between them.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` for NHWC/HWIO as shifted (strided) slices + one matmul.

  For fused steps on the CPU: XLA:CPU runs a convolution inside a loop body (lax.fori_loop/map)
  through a slow generic kernel (jax-ml/jax#12868; docs/performance.md), a matmul it runs
  well. Outside loops XLA's own convolution is faster. The kernel keeps its [kh, kw, in, out]
  shape, so checkpoints are interchangeable. (`lax.conv_general_dilated_patches` is no substitute:
  it is itself a convolution, with kh*kw*in output channels.)
  """
  del dimension_numbers  # flax.linen.Conv passes NHWC/HWIO for 2-D inputs, the only layout used here.
  if feature_group_count != 1 or any(d is not None and tuple(d) != (1, 1) for d in (lhs_dilation, rhs_dilation)):
    raise NotImplementedError("im2col_conv supports no dilation and one group")
  kh, kw, cin, cout = rhs.shape
  _, h, w, _ = lhs.shape
  sh, sw = window_strides
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads((h, w), (kh, kw), window_strides, padding)
  x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  patches = jnp.concatenate(
      [x[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw, :] for i in range(kh) for j in range(kw)],
      axis=-1)
  return jnp.dot(patches, rhs.reshape(kh * kw * cin, cout), precision=precision)


def shifted_sum_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` for NHWC/HWIO, stride 1, VALID, as the sum over the kh*kw window
  offsets of the shifted input times that offset's filter taps: one elementwise loop.

  For a layer with one or a few input channels (the whitening stem reads the 1-channel image):
  XLA:CPU's convolution runs such a layer far below its speed on wide layers (with a 3x3 stem of 18
  filters a training step of 1000 images took 613 ms, 569 with this; docs/recipes.md).
  """
  del dimension_numbers, precision  # NHWC/HWIO (the stem's); elementwise products have no dot precision.
  if (tuple(window_strides) != (1, 1) or padding != "VALID" or feature_group_count != 1
      or any(d is not None and tuple(d) != (1, 1) for d in (lhs_dilation, rhs_dilation))):
    raise NotImplementedError("shifted_sum_conv supports stride 1, VALID, no dilation and one group")
  kh, kw = rhs.shape[:2]
  out_h, out_w = lhs.shape[1] - kh + 1, lhs.shape[2] - kw + 1
  return sum((lhs[:, i:i + out_h, j:j + out_w, :, None] * rhs[i, j]).sum(-2) for i in range(kh) for j in range(kw))


def stem_conv_function(stem_impl: str):
  """The whitening stem's `conv_general_dilated` for a resolved stem_impl."""
  return shifted_sum_conv if stem_impl == "slices" else jax.lax.conv_general_dilated


def conv_function(conv_impl: str):
  """The `conv_general_dilated` of flax.linen.Conv for a resolved conv_impl."""
  return im2col_conv if conv_impl == "im2col" else jax.lax.conv_general_dilated


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def strided_max_pool(x: jnp.ndarray, window: Sequence[int]) -> jnp.ndarray:
  """`nn.max_pool(x, window, strides=window)` (VALID) as a max of strided slices, same gradient.

  XLA differentiates max_pool with select_and_scatter, slow on the CPU. Here each window's
  gradient goes to its first maximum in row-major order, exactly where select_and_scatter puts
  it, ties included, so both give bitwise-equal gradients; every operation is elementwise.
  """
  return functools.reduce(jnp.maximum, _window_offsets(x, window))


def _window_offsets(x, window):
  """The ph*pw strided slices [N, H/ph, W/pw, C] of x, one per window offset, row-major."""
  (ph, pw), (_, h, w, _) = window, x.shape
  return [x[:, i:h // ph * ph:ph, j:w // pw * pw:pw] for i in range(ph) for j in range(pw)]


def _strided_max_pool_fwd(x, window):
  pooled = strided_max_pool(x, window)
  return pooled, (x, pooled)


def _strided_max_pool_bwd(window, residuals, g):
  x, pooled = residuals
  offsets = _window_offsets(x, window)
  taken = jnp.zeros(pooled.shape, bool)
  grads = []
  for xs in offsets:  # The first maximum of each window takes the gradient.
    first = (xs == pooled) & ~taken
    taken = taken | first
    grads.append(jnp.where(first, g, jnp.zeros((), g.dtype)))
  (ph, pw), (n, oh, ow, c) = window, g.shape
  grads = jnp.stack(grads).reshape(ph, pw, n, oh, ow, c).transpose(2, 3, 0, 4, 1, 5)
  grads = grads.reshape(n, oh * ph, ow * pw, c)
  return (jnp.pad(grads, ((0, 0), (0, x.shape[1] - oh * ph), (0, x.shape[2] - ow * pw), (0, 0))),)


strided_max_pool.defvjp(_strided_max_pool_fwd, _strided_max_pool_bwd)


def xla_max_pool(x: jnp.ndarray, window: Sequence[int]) -> jnp.ndarray:
  """Non-overlapping max-pool (stride = window, VALID) by XLA's reduce_window."""
  return nn.max_pool(x, tuple(window), strides=tuple(window))


def max_pool_function(pool_impl: str):
  """The models' (x, window) -> pooled for a resolved pool_impl."""
  return strided_max_pool if pool_impl == "slices" else xla_max_pool
