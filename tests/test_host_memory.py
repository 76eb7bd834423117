"""config.retain_host_memory: training steps stop page-faulting their scratch memory in again, same results."""

import json

import pytest

from tests.conftest import DEBIAN_DIR, run_module

# Minor page faults per step of the base model (batch 250, whose ~200 MB step scratch is far above
# glibc's mmap threshold): the median over six steps (the heap still grows in an early one or two).
_STEPS = """
import hashlib, json, resource, statistics, sys, tempfile
from experiments import base
from fmnist_jax import host_memory
config = base.get_config()
config.retain_host_memory = sys.argv[1] == "1"
config.data.source, config.data.idx_dirs = "idx", (sys.argv[2],)
host_memory.configure(config)
import jax
from fmnist_jax import train
with tempfile.TemporaryDirectory() as workdir:
  trainer = train.Trainer(config, workdir)
state, faults = trainer.initial_state(), []
for step in range(7):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  state, _ = jax.block_until_ready(trainer.run_steps(state, step, step + 1))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
params = hashlib.sha256(b"".join(leaf.tobytes() for leaf in jax.tree.leaves(jax.device_get(state.params))))
print(json.dumps([statistics.median(faults[1:]), params.hexdigest()]))  # Step 0 compiles.
"""


def _faults_and_params(retain: bool):
  proc = run_module(["-c", _STEPS, "1" if retain else "0", DEBIAN_DIR], env={"JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_retained_memory_removes_most_page_faults_of_a_step_and_changes_no_bit():
  (unmapped, params_unmapped), (retained, params_retained) = _faults_and_params(False), _faults_and_params(True)
  assert unmapped > 20_000  # ~200 MB of 4 KiB pages faulted in again every step.
  assert retained < unmapped / 4
  assert params_retained == params_unmapped  # Same arithmetic: bitwise-equal parameters after 7 steps.


def test_without_mallopt_nothing_changes(monkeypatch):
  from fmnist_jax import host_memory

  def no_c_library(name):
    raise OSError(f"{name}: not found")

  monkeypatch.setattr(host_memory.ctypes, "CDLL", no_c_library)
  assert host_memory.retain_freed_memory() is False
