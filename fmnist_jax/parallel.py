"""Data parallelism with jit + jax.sharding: batch on a `data` mesh axis, everything else replicated.

The same code runs on one CPU, fake CPU devices, a GPU, or a multi-host TPU slice (one process per
host after `jax.distributed.initialize()`). Across processes: every process holds the whole
(60,000-image) dataset and places it replicated over the global mesh (`put_replicated`); each
step gathers its global batch on the devices and `shard_batch` splits it over the `data` axis, so
each device computes its share of every step and no process feeds the others (the dataset is small
enough that `jax.make_array_from_process_local_data` over per-process shards would save nothing).
"""

import inspect
from typing import Optional

from absl import logging
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from fmnist_jax import errors

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


# --- Many processes (jax.distributed): what they must agree on --------------------------------
# Every process runs the same host loop on its own; where a host decision could differ between them
# (a signal that reached one first, a lock only process 0 takes), they agree through one tiny
# collective before acting, so none of them waits in a collective the others never enter.


def _gathered(flag: bool) -> np.ndarray:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(np.int32(bool(flag))))


def any_process(flag: bool) -> bool:
  """True in every process if `flag` is True in any (a collective: every process must call it)."""
  return bool(flag) if jax.process_count() == 1 else bool(_gathered(flag).any())


def all_processes(flag: bool) -> bool:
  """True in every process if `flag` is True in all (a collective: every process must call it)."""
  return bool(flag) if jax.process_count() == 1 else bool(_gathered(flag).all())


# Words of the errors a collective or the coordination service raises when another process is gone.
PEER_LOST_MARKERS = ("connection closed by peer", "gloo", "heartbeat", "unavailable", "connection reset",
                     "barrier failed", "task is set to error", "deadline_exceeded", "socket closed")


def peer_lost(error: BaseException) -> bool:
  """Whether `error` says another process of this run stopped (killed, crashed, its host gone)."""
  return jax.process_count() > 1 and any(m in str(error).lower() for m in PEER_LOST_MARKERS)


def join_processes(runtime_config, coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
                   process_id: Optional[int] = None) -> None:
  """jax.distributed.initialize with the given arguments (the cluster's where absent: Cloud TPU, SLURM,
  Open MPI, Kubernetes), before JAX starts a backend; a failure is a ConfigError naming the flags."""
  if num_processes is not None and process_id is not None and process_id >= num_processes:
    raise errors.ConfigError(f"--process_id={process_id} must be below --num_processes={num_processes}")
  try:  # The CPU backend needs it for collectives across processes; GPUs and TPUs ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:  # A jax without the option: its CPU backend has no cross-process collectives.
    pass
  timeouts = {"initialization_timeout": runtime_config.distributed_init_timeout_s,
              "heartbeat_timeout_seconds": runtime_config.distributed_heartbeat_timeout_s,
              "shutdown_timeout_seconds": runtime_config.distributed_heartbeat_timeout_s}
  accepted = inspect.signature(jax.distributed.initialize).parameters  # jax 0.10 and 0.11 take all three.
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id,
        **{name: value for name, value in timeouts.items() if name in accepted})
  except (ValueError, RuntimeError, TypeError) as e:
    reason = " ".join(str(e).split())
    hint = ("the other processes did not all start, or cannot reach the coordinator, within "
            f"config.runtime.distributed_init_timeout_s={runtime_config.distributed_init_timeout_s}"
            if "DEADLINE" in reason.upper() else
            "no cluster was detected" if not (coordinator_address and num_processes) else "")
    raise errors.ConfigError(
        f"--distributed: jax.distributed.initialize() failed ({reason[:300]}){'; ' + hint if hint else ''}; "
        "pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I (the same address and N in every "
        "process), or start the processes with srun, mpirun or `gcloud compute tpus tpu-vm ssh --worker=all`") from e
  logging.info("Process %d of %d, %d of %d devices here", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
