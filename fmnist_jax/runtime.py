"""Execution settings: how a run executes on this machine, never what it computes.

`config.runtime` holds them (defaults: `get_config()`). Every "auto" is resolved here, once,
against the backend (`resolve`), and the process is prepared before JAX starts a backend
(`configure_process`: host allocator, deterministic GPU kernels, compilation cache). The rest of the
code reads the resolved `Runtime`, never the raw fields.

What "auto" picks, and why (the measurements are in docs/performance.md and docs/records.md):
- fused steps on GPU/TPU; step by step on the CPU, where XLA runs a convolution inside a loop body
  through a slow kernel.
- conv "im2col" only for fused steps on the CPU (a matmul runs well inside a loop body there).
- pool "slices" on the CPU, where select_and_scatter (XLA's max-pool gradient) is slow.
- stem "slices" on the CPU, where XLA's convolution of a 1-channel image is slow.
- vmapped sweep members: 16 at a time on GPU/TPU; one by one on the CPU, where vmap turns the
  convolutions into slower grouped ones.
"""

import ctypes
import dataclasses
import os
from typing import Dict, Optional

from absl import logging
import ml_collections

FUSE_MODES = ("auto", "on", "off")
CONV_IMPLS = ("auto", "xla", "im2col")
POOL_IMPLS = ("auto", "xla", "slices")
STEM_IMPLS = ("auto", "xla", "slices")
YNN_FUSIONS = ("dot", "eltwise", "reduce", "individual_dot", "individual_convolution")  # XLA's LibraryFusionType names.
ACCELERATOR_VMAP_MEMBERS = 16  # Sweep group size on GPU/TPU.
CPU_VMAP_MEMBERS = 1  # On the CPU sweep points train one by one.
DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"

# The fields of config.runtime, which saved runs from before the section had at the top level.
FIELDS = ("fuse_steps", "conv_impl", "stem_impl", "pool_impl", "cpu_ynn_fusions", "retain_host_memory",
          "halt_on_nan", "deterministic", "compilation_cache_dir", "profile_steps", "distributed_init_timeout_s",
          "distributed_heartbeat_timeout_s")
PROFILE_SUBDIR = "profile"  # <workdir>/profile: the jax.profiler trace of runtime.profile_steps.


def get_config() -> ml_collections.ConfigDict:
  """The defaults of config.runtime; every "auto" is resolved by `resolve`."""
  config = ml_collections.ConfigDict()
  config.fuse_steps = "auto"  # Steps between two host actions as one compiled fori_loop: "auto" (GPU/TPU on, CPU off), "on", "off".
  config.conv_impl = "auto"  # Convolution arithmetic, same parameters: "xla", "im2col" (slices + matmul), "auto" (im2col only for fused steps on the CPU).
  config.stem_impl = "auto"  # Whitening-stem convolution arithmetic, same function: "xla", "slices" (shifted sum), "auto" (slices on the CPU).
  config.pool_impl = "auto"  # Max-pool arithmetic, same values and gradients: "xla" (select_and_scatter), "slices", "auto" (slices on the CPU).
  config.cpu_ynn_fusions = "dot,reduce"  # XLA:CPU ops given to YNNPACK, comma list of YNN_FUSIONS ("": Eigen for all; None: jaxlib's default).
  config.retain_host_memory = True  # glibc keeps freed host memory mapped for reuse (a CPU step page-faulted ~200 MB in again otherwise).
  config.halt_on_nan = True  # Stop with an error when the loss or gradients turn NaN/Inf (the last good checkpoint is kept).
  config.deterministic = False  # GPU: bitwise-repeatable runs through XLA's deterministic kernels (slower). The CPU always is.
  config.compilation_cache_dir = ml_collections.config_dict.placeholder(str)  # Persistent XLA compilation cache, every program stored (None: off).
  config.profile_steps = ml_collections.config_dict.placeholder(tuple)  # (start, stop): jax.profiler trace of steps [start, stop) in <workdir>/profile for TensorBoard (None: off).
  config.distributed_init_timeout_s = 300  # --distributed: seconds every process waits for all the others to join.
  config.distributed_heartbeat_timeout_s = 100  # --distributed: a process silent this long is dead, the others exit; also the longest wait for them at exit.
  return config


@dataclasses.dataclass(frozen=True)
class Runtime:
  """The resolved execution settings of one process."""

  backend: str
  fused: bool  # Steps between host actions run as one compiled loop.
  conv_impl: str  # "xla" or "im2col".
  stem_impl: str  # "xla" or "slices".
  pool_impl: str  # "xla" or "slices".
  compiler_options: Optional[Dict[str, str]]  # XLA options of every compiled program (None: jaxlib's).
  vmap_members: int  # Default sweep group size.
  halt_on_nan: bool

  def describe(self) -> str:
    return (f"backend {self.backend}, steps {'fused' if self.fused else 'one by one'}, conv {self.conv_impl}, "
            f"stem {self.stem_impl}, pool {self.pool_impl}, XLA options {self.compiler_options or 'default'}, "
            f"sweep members vmapped {self.vmap_members}")


def ynn_fusions(runtime_config) -> list:
  """The names in cpu_ynn_fusions ("dot,reduce" -> ["dot", "reduce"]; "" -> [])."""
  return [name for name in runtime_config.cpu_ynn_fusions.split(",") if name]


def resolve(runtime_config, backend: Optional[str] = None) -> Runtime:
  """Every "auto" of `runtime_config` for `backend` (default: JAX's default backend)."""
  if backend is None:
    import jax  # pylint: disable=g-import-not-at-top
    backend = jax.default_backend()
  on_cpu = backend == "cpu"
  mode = runtime_config.fuse_steps
  fused = (not on_cpu) if mode == "auto" else mode == "on"
  conv = runtime_config.conv_impl
  if conv == "auto":
    conv = "im2col" if (on_cpu and fused) else "xla"
  stem = runtime_config.stem_impl
  if stem == "auto":
    stem = "slices" if on_cpu else "xla"
  pool = runtime_config.pool_impl
  if pool == "auto":
    pool = "slices" if on_cpu else "xla"
  options = None
  if on_cpu and runtime_config.cpu_ynn_fusions is not None:
    options = {"xla_cpu_experimental_ynn_fusion_type": ",".join(
        f"LIBRARY_FUSION_TYPE_{f.upper()}" for f in ynn_fusions(runtime_config))}
  return Runtime(backend=backend, fused=fused, conv_impl=conv, stem_impl=stem, pool_impl=pool,
                 compiler_options=options, vmap_members=CPU_VMAP_MEMBERS if on_cpu else ACCELERATOR_VMAP_MEMBERS,
                 halt_on_nan=bool(runtime_config.halt_on_nan))


# --- Before JAX starts -------------------------------------------------------------------------


def deterministic_enabled() -> bool:
  return DETERMINISTIC_XLA_FLAG in os.environ.get("XLA_FLAGS", "").split()


def enable_deterministic() -> None:
  """Adds XLA's deterministic-kernels flag to XLA_FLAGS (keeping the user's other flags).

  XLA reads XLA_FLAGS once, when JAX starts its first backend. Costs GPU speed: no autotuning,
  and scatters (the confusion counts of the metrics) run as sort/scan expansions.
  """
  if not deterministic_enabled():
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DETERMINISTIC_XLA_FLAG}".strip()


# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # Largest int mallopt takes.


def retain_freed_memory() -> bool:
  """One malloc arena, no mmap'd blocks, no trimming; False where the C library has no mallopt.

  glibc serves XLA:CPU's step scratch with fresh mmap'd pages and unmaps them when freed, so every
  step page-faults them in again. Threads keep the arena they first allocated from, so this must
  run before JAX's first computation. The price: the process keeps its peak host memory.
  """
  try:
    mallopt = ctypes.CDLL(None).mallopt  # The process's own C library.
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER_TRIM))
  return all([mallopt(param, value) == 1 for param, value in settings])


def use_compilation_cache(runtime_config) -> None:
  """compilation_cache_dir: every program is written and read there, even ones that compile fast
  (JAX by default stores only programs over a second of compiling; a cached run wants them all)."""
  if runtime_config.compilation_cache_dir:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(runtime_config.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def configure_process(runtime_config) -> None:
  """Applies what must precede JAX's first computation. Every entry point calls it after parsing flags."""
  if runtime_config.retain_host_memory:
    if retain_freed_memory():
      logging.debug("Host memory: freed blocks are kept for reuse (runtime.retain_host_memory)")
    else:
      logging.info("Host memory: the C library has no glibc mallopt; runtime.retain_host_memory changes nothing")
  if runtime_config.deterministic:
    enable_deterministic()
    logging.info("Deterministic GPU kernels: XLA_FLAGS=%s", os.environ["XLA_FLAGS"])
  use_compilation_cache(runtime_config)
