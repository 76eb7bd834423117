"""config.runtime: every "auto" resolves in one place; the settings change how a run executes, never its numbers."""

import json

import pytest

from fmnist_jax import run_folder
from fmnist_jax import runtime
from tests.conftest import data_dir, run_module, tiny_config

# Seven base-model steps in a fresh process, with or without retained host memory; prints a hash of
# the parameters. (Page faults, the reason for the setting, are measured by benchmarks/speed.py.)
_STEPS = """
import hashlib, sys
import jax
from fmnist_jax import train, run_folder, runtime
config = run_folder.default_config()
config.runtime.retain_host_memory = sys.argv[1] == "1"
config.data.source, config.data.idx_dirs = "idx", (sys.argv[2],)
runtime.configure_process(config.runtime)
trainer = train.Trainer(config)
state = trainer.initial_state()
for step in range(7):
  state, _ = trainer.run_steps(state, step, step + 1)
params = jax.device_get(state.params)
print(hashlib.sha256(b"".join(leaf.tobytes() for leaf in jax.tree.leaves(params))).hexdigest())
"""


def _params_hash(retain: bool) -> str:
  proc = run_module(["-c", _STEPS, "1" if retain else "0", data_dir()], env={"JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_retained_host_memory_changes_no_bit_of_training():
  assert _params_hash(retain=True) == _params_hash(retain=False)


def test_without_mallopt_retaining_memory_reports_false(monkeypatch):
  def no_c_library(name):
    raise OSError(f"{name}: not found")

  monkeypatch.setattr(runtime.ctypes, "CDLL", no_c_library)
  assert runtime.retain_freed_memory() is False


def test_auto_resolves_per_backend():
  rt = tiny_config().runtime
  cpu, gpu = runtime.resolve(rt, "cpu"), runtime.resolve(rt, "gpu")
  assert (cpu.fused, cpu.conv_impl, cpu.stem_impl, cpu.pool_impl, cpu.vmap_members) == (
      False, "xla", "slices", "slices", 1)
  assert (gpu.fused, gpu.conv_impl, gpu.stem_impl, gpu.pool_impl, gpu.vmap_members) == (True, "xla", "xla", "xla", 16)
  assert gpu.compiler_options is None and "LIBRARY_FUSION_TYPE_DOT" in cpu.compiler_options[
      "xla_cpu_experimental_ynn_fusion_type"]
  fused_cpu = runtime.resolve(tiny_config(**{"runtime.fuse_steps": "on"}).runtime, "cpu")
  assert (fused_cpu.fused, fused_cpu.conv_impl) == (True, "im2col")  # A matmul runs well inside a loop body.
  pinned = runtime.resolve(tiny_config(**{"runtime.conv_impl": "xla", "runtime.pool_impl": "xla"}).runtime, "cpu")
  assert (pinned.conv_impl, pinned.pool_impl) == ("xla", "xla")


def test_the_experiment_config_holds_no_execution_setting():
  config = run_folder.default_config()
  assert set(config.runtime.keys()) == set(runtime.FIELDS)
  assert not set(runtime.FIELDS) & set(config.keys())


def test_a_config_saved_before_the_runtime_section_loads_into_it(tmp_path):
  saved = json.loads(run_folder.default_config().to_json_best_effort())
  del saved["runtime"]
  saved.update(fuse_steps="on", halt_on_nan=False, compilation_cache_dir="/cache")
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = run_folder.load_config(str(tmp_path))
  assert (config.runtime.fuse_steps, config.runtime.halt_on_nan) == ("on", False)
  assert config.runtime.compilation_cache_dir == "/cache" and config.runtime.pool_impl == "auto"
  assert "fuse_steps" not in config
