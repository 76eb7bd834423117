"""The original project's CNN as a pure Flax linen module (no training logic)."""

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


class CNN(nn.Module):
  """conv → pool → conv → pool → flatten → dense → logits, as in the TF1 model table."""

  conv_features: Sequence[int] = (64, 64)
  kernel_size: Sequence[int] = (5, 5)
  pool_size: Sequence[int] = (2, 2)
  dense_features: int = 1024
  num_classes: int = 10
  activation: Callable[[jnp.ndarray], jnp.ndarray] = nn.elu
  dtype: jnp.dtype = jnp.float32  # Compute dtype; parameters stay float32.

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """Maps images [N, 28, 28, 1] in [0, 1] to float32 logits [N, num_classes]."""
    x = x.astype(self.dtype)
    for features in self.conv_features:
      x = nn.Conv(features, tuple(self.kernel_size), padding="SAME", dtype=self.dtype)(x)
      x = self.activation(x)
      x = nn.max_pool(x, tuple(self.pool_size), strides=tuple(self.pool_size))
    x = x.reshape((x.shape[0], -1))
    x = self.activation(nn.Dense(self.dense_features, dtype=self.dtype)(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


def create_model(config) -> CNN:
  """Builds the CNN from `config.model` and `config.dtype` (names already validated)."""
  m = config.model
  return CNN(
      conv_features=tuple(m.conv_features),
      kernel_size=tuple(m.kernel_size),
      pool_size=tuple(m.pool_size),
      dense_features=m.dense_features,
      num_classes=m.num_classes,
      activation=getattr(nn, m.activation),
      dtype=jnp.dtype(config.dtype),
  )
