"""config.retain_host_memory: reuse freed host memory instead of handing it back to the OS each step.

glibc serves big allocations (XLA:CPU's scratch for a training step, ~200 MB at batch 250, and
Eigen's convolution buffers) with fresh mmap'd pages and unmaps them when freed, so every step
page-faults them in again: measured ~52,000 page faults and ~0.1 s of kernel time per step on a
2-core CPU. With one malloc arena, no mmap and no trimming, the pages stay mapped and are reused
(~3,000 faults per step); PyTorch in the same process, which allocates every tensor anew, gains too. The price: the process keeps its peak
host memory until it exits.

Threads keep the arena they first allocated from, so this must run before JAX's first computation
(the entry points call it right after parsing flags). glibc only; elsewhere it changes nothing.
"""

import ctypes

from absl import logging

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # Largest int mallopt takes: free memory is kept up to 2 GiB past the heap top.


def retain_freed_memory() -> bool:
  """One malloc arena, no mmap'd blocks, no trimming; False where the C library has no mallopt."""
  try:
    mallopt = ctypes.CDLL(None).mallopt  # The process's own C library.
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER_TRIM))
  return all([mallopt(param, value) == 1 for param, value in settings])


def configure(config) -> None:
  """Applies `config.retain_host_memory`; call before any JAX work."""
  if not config.retain_host_memory:
    return
  if retain_freed_memory():
    logging.info("Host memory: freed blocks are kept for reuse (config.retain_host_memory)")
  else:
    logging.info("Host memory: the C library has no glibc mallopt; config.retain_host_memory changes nothing")
