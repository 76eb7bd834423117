"""The models as pure Flax linen modules (no training logic): the original CNN and a residual family.

Every model is called as `model.apply(variables, images, train=...)`: in training, dropout draws
from the "dropout" rng and BatchNorm statistics (collection "batch_stats") are updated; in
evaluation and prediction the statistics are used, not updated.
"""

import functools
from typing import Callable, List, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fmnist_jax import augment
from fmnist_jax import runtime


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` for NHWC/HWIO as shifted (strided) slices + one matmul.

  For fused steps on the CPU: XLA:CPU runs a convolution inside a loop body (lax.fori_loop/map)
  through a slow generic kernel (jax-ml/jax#12868; measured >30x slower here), a matmul it runs
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


def _conv_function(conv_impl: str):
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


class CNN(nn.Module):
  """conv → pool → conv → pool → flatten → dense → logits, as in the TF1 model table.

  Beyond the seed: `batch_norm` puts BatchNorm between each conv and its activation (the convs
  then have no bias), and `dense_features=0` maps the flattened features straight to the logits.
  """

  conv_features: Sequence[int] = (64, 64)
  kernel_size: Sequence[int] = (5, 5)
  pool_size: Sequence[int] = (2, 2)
  dense_features: int = 1024
  num_classes: int = 10
  activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.elu
  batch_norm: bool = False
  batch_norm_momentum: float = 0.9
  dtype: jnp.dtype = jnp.float32  # Compute dtype; parameters stay float32.
  conv_impl: str = "xla"  # "xla" or "im2col": same parameters and function, different arithmetic.
  pool_impl: str = "xla"  # "xla" (nn.max_pool) or "slices" (strided_max_pool): same values and gradients.

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Maps images [N, 28, 28, 1] in [0, 1] to float32 logits [N, num_classes]; BatchNorm (if any)
    normalizes with the batch's statistics and updates its running ones only in training."""
    x = x.astype(self.dtype)
    conv = _conv_function(self.conv_impl)
    for features in self.conv_features:
      x = nn.Conv(features, tuple(self.kernel_size), padding="SAME", dtype=self.dtype, use_bias=not self.batch_norm,
                  conv_general_dilated=conv)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum, dtype=self.dtype)(x)
      x = self.activation(x)
      if self.pool_impl == "slices":
        x = strided_max_pool(x, tuple(self.pool_size))
      else:
        x = nn.max_pool(x, tuple(self.pool_size), strides=tuple(self.pool_size))
    x = x.reshape((x.shape[0], -1))
    if self.dense_features:
      x = self.activation(nn.Dense(self.dense_features, dtype=self.dtype)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


class ResidualBlock(nn.Module):
  """Pre-activation residual block (He et al. 2016; Zagoruyko & Komodakis' wide-ResNet block):
  [BN] act conv3x3(stride) [BN] act [dropout] conv3x3, plus a 1x1 projection when the shape changes."""

  features: int
  strides: int
  batch_norm: bool
  batch_norm_momentum: float
  dropout_rate: float
  activation: Callable[[jnp.ndarray], jnp.ndarray]
  dtype: jnp.dtype
  conv_impl: str = "xla"  # "xla" or "im2col": same parameters and function, different arithmetic.

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=not self.batch_norm, dtype=self.dtype,
                             conv_general_dilated=_conv_function(self.conv_impl))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.batch_norm_momentum,
                             dtype=self.dtype)
    y = self.activation(norm()(x) if self.batch_norm else x)
    shortcut = x
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = conv(self.features, (1, 1), strides=self.strides)(y)
    y = conv(self.features, (3, 3), strides=self.strides, padding=1)(y)
    y = self.activation(norm()(y) if self.batch_norm else y)
    if self.dropout_rate:
      y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = conv(self.features, (3, 3), padding=1)(y)
    return shortcut + y


class ResNet(nn.Module):
  """conv3x3 stem → stages of residual blocks (the first block of each stage strides by its
  stage_strides entry) → [BN] act → global average pool → dense logits. WRN-d-k: stage_features
  (16k, 32k, 64k), (d - 4) / 6 blocks per stage, strides (1, 2, 2)."""

  stem_features: int = 16
  stage_features: Sequence[int] = (16, 32, 64)
  blocks_per_stage: Sequence[int] = (2, 2, 2)
  stage_strides: Sequence[int] = (1, 2, 2)
  batch_norm: bool = True
  batch_norm_momentum: float = 0.9
  dropout_rate: float = 0.0
  num_classes: int = 10
  activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "xla"  # "xla" or "im2col": same parameters and function, different arithmetic.

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Maps images [N, 28, 28, 1] in [0, 1] to float32 logits [N, num_classes]."""
    x = nn.Conv(self.stem_features, (3, 3), padding=1, use_bias=not self.batch_norm, dtype=self.dtype,
                conv_general_dilated=_conv_function(self.conv_impl))(x.astype(self.dtype))
    for features, blocks, stride in zip(self.stage_features, self.blocks_per_stage, self.stage_strides):
      for block in range(blocks):
        x = ResidualBlock(features, 1 if block else stride, self.batch_norm, self.batch_norm_momentum,
                          self.dropout_rate, self.activation, self.dtype, self.conv_impl)(x, train)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum, dtype=self.dtype)(x)
    x = self.activation(x).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def resnet_config() -> ml_collections.ConfigDict:
  """`config.model` of a ResNet (assign it whole: a resnet's section holds none of the CNN's fields)."""
  m = ml_collections.ConfigDict()
  m.name = "resnet"  # Model family: "cnn" (the seed's) or "resnet".
  m.stem_features = 16  # Output channels of the first 3x3 convolution.
  m.stage_features = (16, 32, 64)  # Channels of each stage.
  m.blocks_per_stage = (2, 2, 2)  # Residual blocks in each stage (WRN-d-k: (d - 4) / 6 each, widths 16k, 32k, 64k).
  m.stage_strides = (1, 2, 2)  # Stride of each stage's first block: 1 keeps the resolution, 2 halves it.
  m.batch_norm = True  # BatchNorm before each activation (its statistics are model state, checkpointed).
  m.batch_norm_momentum = 0.9  # Running statistics: new = momentum * old + (1 - momentum) * batch's.
  m.dropout_rate = 0.0  # Dropout between the two convolutions of each block (0: none).
  m.activation = "relu"  # Nonlinearity (any flax.linen activation name).
  m.num_classes = 10  # Output logits.
  return m


def create_model(config, rt=None) -> nn.Module:
  """Builds `config.model` (names already validated) with compute dtype `config.dtype`; `rt`, a
  resolved `runtime.Runtime`, picks the layer arithmetic (default: resolved for JAX's backend)."""
  m = config.model
  if rt is None:
    rt = runtime.resolve(config.runtime)
  if m.name == "resnet":
    return ResNet(stem_features=m.stem_features, stage_features=tuple(m.stage_features),
                  blocks_per_stage=tuple(m.blocks_per_stage), stage_strides=tuple(m.stage_strides),
                  batch_norm=m.batch_norm, batch_norm_momentum=m.batch_norm_momentum,
                  dropout_rate=m.dropout_rate, num_classes=m.num_classes, activation=getattr(nn, m.activation),
                  dtype=jnp.dtype(config.dtype), conv_impl=rt.conv_impl)
  return CNN(
      conv_features=tuple(m.conv_features),
      kernel_size=tuple(m.kernel_size),
      pool_size=tuple(m.pool_size),
      dense_features=m.dense_features,
      num_classes=m.num_classes,
      activation=getattr(nn, m.activation),
      batch_norm=m.batch_norm,
      batch_norm_momentum=m.batch_norm_momentum,
      dtype=jnp.dtype(config.dtype),
      conv_impl=rt.conv_impl,
      pool_impl=rt.pool_impl,
  )


def inference_variables(params, batch_stats=None, ema_params=None, ema_batch_stats=None) -> dict:
  """What evaluation and prediction apply: the EMA of the parameters and of the BatchNorm statistics
  when kept, else the parameters and the statistics."""
  if ema_params is not None:
    params, batch_stats = ema_params, batch_stats if ema_batch_stats is None else ema_batch_stats
  variables = {"params": params}
  if batch_stats is not None:
    variables["batch_stats"] = batch_stats
  return variables


class TTA(NamedTuple):
  """Test-time augmentation: the views of each image whose logits evaluation and prediction average."""
  flip: bool = False  # Each view and its mirror.
  shift_pixels: int = 0  # The image and its four shifts by this many pixels up, down, left, right (0: none).


def tta_of(config) -> TTA:
  return TTA(flip=bool(config.eval_flip_tta), shift_pixels=int(config.eval_tta_shift_pixels))


def tta_views(images, tta: TTA) -> List:
  """The views averaged: the images first, then their shifts, each followed by its mirror when flipping."""
  k = tta.shift_pixels
  views = [images] + ([augment.shift(images, dy, dx) for dy, dx in ((-k, 0), (k, 0), (0, -k), (0, k))] if k else [])
  return [v for view in views for v in ((view, view[:, :, ::-1]) if tta.flip else (view,))]


def inference_logits(apply_fn, variables, images, tta: TTA):
  """Evaluation and prediction logits (statistics used, not updated): the mean over `tta_views`."""
  views = tta_views(images, tta)
  return sum(apply_fn(variables, view, train=False) for view in views) / len(views)
