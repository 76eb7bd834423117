"""config.deterministic: XLA's deterministic GPU kernels, switched on through XLA_FLAGS.

XLA reads XLA_FLAGS once, when jax starts its first backend, so `enable()` must run before any
jax computation (fmnist_jax.main calls it right after parsing flags). The CPU backend is
deterministic either way. The cost is speed on GPUs: kernels are no longer picked by timing
(autotuning), and scatters, such as the confusion-matrix counts in the metrics, run as
deterministic sort/scan expansions instead of atomic adds.
"""

import os

XLA_FLAG = "--xla_gpu_deterministic_ops=true"


def enabled() -> bool:
  return XLA_FLAG in os.environ.get("XLA_FLAGS", "").split()


def enable() -> None:
  """Adds the flag to XLA_FLAGS (keeping the user's other flags)."""
  if not enabled():
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_FLAG}".strip()
