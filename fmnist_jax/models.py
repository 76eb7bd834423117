"""The models as pure Flax linen modules (no training logic): the original CNN and a residual family.

Every model is called as `model.apply(variables, images, train=...)`: in training, dropout draws
from the "dropout" rng and BatchNorm statistics (collection "batch_stats") are updated; in
evaluation and prediction the statistics are used, not updated.
"""

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fmnist_jax import kernels
from fmnist_jax import runtime
from fmnist_jax import whitening


class WhiteningStem(nn.Module):
  """A k×k VALID convolution whose filters are fixed (no gradient reaches them) and a trained bias.
  `steps.init_variables` sets the filters to the training images' patch whitening
  (fmnist_jax/whitening.py); initialized here they are zeros."""

  kernel_size: int
  directions: int = 0  # The patch directions kept (whitening.num_directions); 0: all.
  dtype: jnp.dtype = jnp.float32
  conv: Callable = jax.lax.conv_general_dilated  # kernels.stem_conv_function picks it.

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    shape = whitening.kernel_shape(self.kernel_size, x.shape[-1], self.directions)  # patch_whitening's.
    kernel = self.param("kernel", nn.initializers.zeros_init(), shape)
    bias = self.param("bias", nn.initializers.zeros_init(), shape[-1:])
    y = self.conv(x, jax.lax.stop_gradient(kernel).astype(self.dtype), (1, 1), "VALID",
                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


class CNN(nn.Module):
  """conv → pool → conv → pool → flatten → dense → logits, as in the TF1 model table.

  Beyond the seed: `batch_norm` puts BatchNorm between each conv and its activation (the convs
  then have no bias), and `dense_features=0` maps the flattened features straight to the logits.
  airbench's structure: `whiten_kernel_size` puts a patch-whitening stem (and the activation) first,
  `whiten_directions` keeping only its strongest patch directions;
  `convs_per_stage=2` makes each stage conv → pool → [BN] act → conv → [BN] act (its second conv
  at the pooled resolution); `batch_norm_scale=False` leaves BatchNorm without a learned scale.
  """

  conv_features: Sequence[int] = (64, 64)
  kernel_size: Sequence[int] = (5, 5)
  pool_size: Sequence[int] = (2, 2)
  dense_features: int = 1024
  num_classes: int = 10
  activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.elu
  batch_norm: bool = False
  batch_norm_momentum: float = 0.9
  batch_norm_scale: bool = True
  whiten_kernel_size: int = 0  # 0: no whitening stem.
  whiten_directions: int = 0  # The stem's patch directions kept; 0: all.
  convs_per_stage: int = 1
  dtype: jnp.dtype = jnp.float32  # Compute dtype; parameters stay float32.
  conv: Callable = jax.lax.conv_general_dilated  # nn.Conv's convolution (kernels.conv_function picks it).
  stem_conv: Callable = jax.lax.conv_general_dilated  # The whitening stem's (kernels.stem_conv_function picks it).
  max_pool: Callable = kernels.xla_max_pool  # (x, window) -> pooled; kernels.max_pool_function picks it.

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Maps images [N, 28, 28, 1] in [0, 1] to float32 logits [N, num_classes]; BatchNorm (if any)
    normalizes with the batch's statistics and updates its running ones only in training."""
    x = x.astype(self.dtype)
    if self.whiten_kernel_size:
      x = self.activation(WhiteningStem(self.whiten_kernel_size, self.whiten_directions, self.dtype, self.stem_conv,
                                          name=whitening.STEM)(x))

    def conv(x, features):
      return nn.Conv(features, tuple(self.kernel_size), padding="SAME", dtype=self.dtype,
                     use_bias=not self.batch_norm, conv_general_dilated=self.conv)(x)

    def norm_act(x):
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                         use_scale=self.batch_norm_scale, dtype=self.dtype)(x)
      return self.activation(x)

    for features in self.conv_features:
      if self.convs_per_stage == 1:  # The seed's order: the pool last.
        x = self.max_pool(norm_act(conv(x, features)), tuple(self.pool_size))
      else:
        x = norm_act(self.max_pool(conv(x, features), tuple(self.pool_size)))
        for _ in range(self.convs_per_stage - 1):
          x = norm_act(conv(x, features))
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
  conv: Callable = jax.lax.conv_general_dilated  # nn.Conv's convolution (kernels.conv_function picks it).

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=not self.batch_norm, dtype=self.dtype,
                             conv_general_dilated=self.conv)
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
  conv: Callable = jax.lax.conv_general_dilated  # nn.Conv's convolution (kernels.conv_function picks it).

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Maps images [N, 28, 28, 1] in [0, 1] to float32 logits [N, num_classes]."""
    x = nn.Conv(self.stem_features, (3, 3), padding=1, use_bias=not self.batch_norm, dtype=self.dtype,
                conv_general_dilated=self.conv)(x.astype(self.dtype))
    for features, blocks, stride in zip(self.stage_features, self.blocks_per_stage, self.stage_strides):
      for block in range(blocks):
        x = ResidualBlock(features, 1 if block else stride, self.batch_norm, self.batch_norm_momentum,
                          self.dropout_rate, self.activation, self.dtype, self.conv)(x, train)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum, dtype=self.dtype)(x)
    x = self.activation(x).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)




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
                  dtype=jnp.dtype(config.dtype), conv=kernels.conv_function(rt.conv_impl))
  return CNN(
      conv_features=tuple(m.conv_features),
      kernel_size=tuple(m.kernel_size),
      pool_size=tuple(m.pool_size),
      dense_features=m.dense_features,
      num_classes=m.num_classes,
      activation=getattr(nn, m.activation),
      batch_norm=m.batch_norm,
      batch_norm_momentum=m.batch_norm_momentum,
      batch_norm_scale=m.batch_norm_scale,
      whiten_kernel_size=m.whiten_kernel_size,
      whiten_directions=m.whiten_directions,
      convs_per_stage=m.convs_per_stage,
      dtype=jnp.dtype(config.dtype),
      conv=kernels.conv_function(rt.conv_impl),
      stem_conv=kernels.stem_conv_function(rt.stem_impl),
      max_pool=kernels.max_pool_function(rt.pool_impl),
  )
