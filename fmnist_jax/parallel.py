"""Data parallelism with jit + jax.sharding: batch on a `data` mesh axis, everything else replicated.

The same code runs on one CPU, fake CPU devices, a GPU, or a multi-host TPU slice (one process per
host after `jax.distributed.initialize()`).
"""

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def put_replicated(mesh: Mesh, tree):
  """Host arrays (identical on every process) → global arrays replicated over the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]), tree)


def shard_batch(mesh: Mesh, batch):
  """Constrains a batch (inside jit) to be split over the data axis along its leading dimension."""
  return jax.lax.with_sharding_constraint(batch, batch_sharded(mesh))
