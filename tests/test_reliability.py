"""What survives what: kill -9, SIGTERM/SIGINT, damaged checkpoints, NaN losses, bad configs,
failed writes, and arbitrary image bytes.

Real `python -m fmnist_jax.main` processes are killed or signalled at chosen moments and run again
with the same command; on the CPU the final training state must then equal, bit for bit, that of
a run that was never interrupted.
"""

import functools
import glob
import io
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
import jax
import numpy as np
from PIL import Image
import pytest
from tensorboard.compat.proto import event_pb2

from fmnist_jax import checkpoints
from fmnist_jax import config_checks
from fmnist_jax import errors
from fmnist_jax import images
from fmnist_jax import run_folder
from fmnist_jax import runtime
from fmnist_jax import steps
from fmnist_jax import train
from tests.conftest import REPO, tiny_config, UNCHECKED_OPTIMIZER_MAIN

NO_TENSORFLOW = os.path.join(os.path.dirname(os.path.abspath(__file__)), "no_tensorflow")
NUM_STEPS = 30
# The command every test runs again: a tiny model; a log line every 5 steps, a checkpoint every
# 10, the evaluation (of the whole test split) only at the end.
COMMAND = ("--config=experiments/base.py", "--config.model.conv_features=(4,8)",
           "--config.model.dense_features=16", "--config.batch_size=100",
           f"--config.num_train_steps={NUM_STEPS}", "--config.log_every_steps=5",
           f"--config.eval_every_steps={NUM_STEPS}", "--config.checkpoint_every_steps=10",
           "--config.data.source=idx")
TIMEOUT_S = 300  # Generous: other jobs may share the CPU.
_running = []


class Training:
  """A `python -m fmnist_jax.main` process; its stderr is collected line by line while it runs.

  Without `tensorflow`, the process runs as on a host without TensorFlow (faster to start). The
  caller's XLA_FLAGS (e.g. a device count) are not passed on, so every run sees one CPU device.
  """

  def __init__(self, workdir, *flags, tensorflow=False, env=None, program=("-m", "fmnist_jax.main")):
    path = [REPO] if tensorflow else [NO_TENSORFLOW, REPO]
    inherited = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    self.proc = subprocess.Popen(
        [sys.executable, *program, *COMMAND, f"--workdir={workdir}", *flags], cwd=REPO,
        env={**inherited, "PYTHONPATH": os.pathsep.join(path), **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _running.append(self.proc)
    self.lines = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stderr:
      self.lines.append(line)

  def logged(self, text: str) -> bool:
    return any(text in line for line in self.lines)

  def wait_until(self, ready, what: str, poll_s: float = 0.005) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
      if self.proc.poll() is not None:
        self._reader.join()
        pytest.fail(f"training exited ({self.proc.returncode}) before {what}:\n{self.log()}")
      if time.monotonic() > deadline:
        pytest.fail(f"no {what} within {TIMEOUT_S} s:\n{self.log()}")
      time.sleep(poll_s)

  def signal(self, signum) -> None:
    self.proc.send_signal(signum)

  def finish(self) -> int:
    code = self.proc.wait(TIMEOUT_S)
    self._reader.join()
    return code

  def error_lines(self) -> list:
    return [line.strip() for line in self.lines if line.startswith("error:")]

  def log(self) -> str:
    return "".join(self.lines[-60:])


@pytest.fixture(autouse=True)
def _no_stray_processes():
  """A failed test must not leave a training running."""
  yield
  while _running:
    proc = _running.pop()
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def final_state(workdir):
  """(step, TrainState) of the newest good checkpoint of `workdir`, restored as training does."""
  config = run_folder.load_config(workdir)
  abstract = jax.eval_shape(functools.partial(steps.create_train_state, config), jax.random.PRNGKey(0))
  return checkpoints.Checkpointer(workdir, read_only=True).restore_latest(abstract)


def assert_bitwise_equal(expected, actual) -> None:
  """Parameters, Adam state and step equal bit for bit."""
  want = jax.tree_util.tree_leaves_with_path((expected.params, expected.opt_state, expected.step))
  got = jax.tree_util.tree_leaves((actual.params, actual.opt_state, actual.step))
  assert len(want) == len(got)
  for (path, w), g in zip(want, got):
    w, g = np.asarray(w), np.asarray(g)
    assert w.dtype == g.dtype and w.shape == g.shape, jax.tree_util.keystr(path)
    assert w.tobytes() == g.tobytes(), (
        f"{jax.tree_util.keystr(path)}: max |difference| {np.max(np.abs(w.astype(float) - g))}")


def event_steps(logdir: str, tag: str) -> set:
  """Steps at which `tag` was written to the event files of `logdir` (a record cut short is ignored)."""
  seen_steps = set()
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):  # TFRecord: length u64, its crc u32, payload, payload crc u32.
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      end = pos + 12 + length
      if end + 4 > len(data):
        break
      event = event_pb2.Event.FromString(data[pos + 12:end])
      if any(v.tag == tag for v in event.summary.value):
        seen_steps.add(event.step)
      pos = end + 4
  return seen_steps


def file_contents(root: str) -> dict:
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
  """Environment for a persistent XLA compilation cache shared by the runs (a third of their CPU
  time otherwise). The reference run fills it; every later run loads its programs from it."""
  return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla_cache")),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, xla_cache):
  """The command run to the end without interruption, and alongside it the same command with
  config.deterministic on (for the determinism test). Both compile their programs afresh."""
  workdir, twin = (str(tmp_path_factory.mktemp(name)) for name in ("reference", "twin"))
  runs = [Training(workdir, env=xla_cache), Training(twin, "--config.runtime.deterministic=True")]
  for run in runs:
    assert run.finish() == 0, run.log()
  step, state = final_state(workdir)
  assert step == NUM_STEPS
  return {"workdir": workdir, "state": state, "twin": twin, "twin_log": "".join(runs[1].lines)}


# --- Determinism ------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_with_one_seed_are_bitwise_identical(reference):
  assert f"Deterministic GPU kernels: XLA_FLAGS={runtime.DETERMINISTIC_XLA_FLAG}" in reference["twin_log"]
  step, state = final_state(reference["twin"])
  assert step == NUM_STEPS
  assert_bitwise_equal(reference["state"], state)


def test_deterministic_config_without_the_xla_flag_is_refused(monkeypatch):
  """In-process callers of train cannot get it silently ignored: XLA reads its flags only once."""
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  with pytest.raises(errors.ConfigError, match="xla_gpu_deterministic_ops"):
    config_checks.validate(tiny_config(**{"runtime.deterministic": True}), 1)
  monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=1 {runtime.DETERMINISTIC_XLA_FLAG}")
  config_checks.validate(tiny_config(**{"runtime.deterministic": True}), 1)


# --- kill -9 ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_step_mid_eval_and_mid_save_then_rerun_ends_bitwise_identical(
    tmp_path, reference, xla_cache):
  workdir = str(tmp_path / "run")
  ckpt_dir = checkpoints.checkpoint_dir(workdir)

  # Mid-step: step 10 was just committed (Orbax renames a finished step into place); the loop
  # is already training the steps after it.
  run = Training(workdir, env=xla_cache)
  run.wait_until(lambda: os.path.isdir(os.path.join(ckpt_dir, "10")), "commit of step 10")
  run.signal(signal.SIGKILL)
  assert run.finish() == -signal.SIGKILL

  # Mid-save: a step is written into `<step>.orbax-checkpoint-tmp` until it is complete. This
  # run saves steps 20 and 30: two chances to catch a write (one left by the kill above is stale).
  stale = _unfinished_saves(ckpt_dir)
  run = Training(workdir, env=xla_cache)
  run.wait_until(lambda: _unfinished_saves(ckpt_dir) - stale, "a checkpoint being written", poll_s=0.0002)
  run.signal(signal.SIGKILL)
  assert run.finish() == -signal.SIGKILL
  assert run.logged("Resuming from step 10"), run.log()

  # Mid-eval: the last log line is written just before the final evaluation (and the last save).
  run = Training(workdir, env=xla_cache)
  run.wait_until(lambda: run.logged(f"step {NUM_STEPS}/{NUM_STEPS} |"), "the last log line")
  run.signal(signal.SIGKILL)
  assert run.finish() == -signal.SIGKILL

  run = Training(workdir, env=xla_cache)
  assert run.finish() == 0, run.log()
  assert not run.logged("cannot be restored"), "a kill left a committed step damaged:\n" + run.log()
  step, state = final_state(workdir)
  assert step == NUM_STEPS
  assert_bitwise_equal(reference["state"], state)


def _unfinished_saves(ckpt_dir: str) -> set:
  """(name, inode) of Orbax's temporary folders; a new save replaces a stale one of its step."""
  with os.scandir(ckpt_dir) as entries:
    return {(e.name, e.inode()) for e in entries if ".orbax-checkpoint-tmp" in e.name}


# --- SIGINT / SIGTERM -------------------------------------------------------------------------


@pytest.mark.slow
def test_sigint_and_sigterm_save_flush_exit_75_and_the_rerun_resumes(tmp_path, reference, xla_cache):
  workdir = str(tmp_path / "run")
  stopped = []
  # SIGINT with TensorFlow installed (not loaded: data.source=idx), SIGTERM without it.
  for signum, tensorflow in ((signal.SIGINT, True), (signal.SIGTERM, False)):
    run = Training(workdir, tensorflow=tensorflow, env=xla_cache)
    # The handlers are installed while the loop runs, which writes the log lines.
    run.wait_until(lambda: any(re.search(r"step \d+/\d+ \|", line) for line in run.lines), "a log line")
    run.signal(signum)
    assert run.finish() == errors.EXIT_INTERRUPTED, run.log()
    assert not run.logged("Traceback"), run.log()
    [line] = run.error_lines()
    match = re.search(rf"stopped by {signum.name} at step (\d+);", line)
    assert match, line
    step = int(match.group(1))
    # Step by step, so it stops after the step in flight: often a log point (the loop waits for the
    # device there), not always.
    assert 5 <= step < NUM_STEPS  # Signalled after the first log line, stopped before the end.
    assert final_state(workdir)[0] == step  # Saved and committed before exiting.
    log_points = set(range(5, step + 1, 5))
    assert log_points <= set(event_steps(os.path.join(workdir, "train"), "loss"))  # Flushed.
    stopped.append(step)
  assert stopped[1] > stopped[0]  # The second run resumed where the first stopped.

  run = Training(workdir, env=xla_cache)
  assert run.finish() == 0, run.log()
  assert run.logged(f"Resuming from step {stopped[1]}")
  assert_bitwise_equal(reference["state"], final_state(workdir)[1])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_during_start_up_exits_75_at_once_with_nothing_trained(tmp_path, signum):
  workdir = str(tmp_path / "run")
  run = Training(workdir)
  run.wait_until(lambda: run.logged("Runtime: "), "start-up")  # Then it loads the data and compiles.
  run.signal(signum)
  assert run.finish() == errors.EXIT_INTERRUPTED, run.log()
  [line] = run.error_lines()
  assert f"stopped by {signum.name} outside the training steps" in line, run.log()
  assert not run.logged("Traceback") and not run.logged("step 5/")
  assert checkpoints.Checkpointer(workdir, read_only=True).steps() == []


# --- Damaged checkpoints ----------------------------------------------------------------------


def _truncate_arrays(step_dir):
  for path in glob.glob(os.path.join(step_dir, "params", "ocdbt.process_0", "d", "*")):
    os.truncate(path, os.path.getsize(path) // 2)


def _delete_item_metadata(step_dir):
  os.remove(os.path.join(step_dir, "params", "_METADATA"))


def _delete_checkpoint_metadata(step_dir):
  os.remove(os.path.join(step_dir, "_CHECKPOINT_METADATA"))


def _interrupted_save(step_dir):
  """A copy of the step as an unfinished save of a newer step, its arrays cut short."""
  partial = os.path.join(os.path.dirname(step_dir), "40.orbax-checkpoint-tmp")
  shutil.copytree(step_dir, partial)
  _truncate_arrays(partial)


@pytest.mark.slow  # Trains whole runs.
@pytest.mark.parametrize("damage, restored_step", [
    (_truncate_arrays, 20), (_delete_item_metadata, 20),
    (_delete_checkpoint_metadata, NUM_STEPS),  # The data is all there: it still restores.
    (_interrupted_save, NUM_STEPS),  # Never committed: not a step.
], ids=lambda x: getattr(x, "__name__", "")[1:])
def test_damaged_latest_checkpoint_falls_back_with_a_warning_and_keeps_every_file(
    tmp_path, reference, damage, restored_step, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference["workdir"], workdir)
  ckpt_dir = checkpoints.checkpoint_dir(workdir)
  damage(os.path.join(ckpt_dir, str(NUM_STEPS)))
  before = file_contents(ckpt_dir)

  config = run_folder.load_config(workdir)
  abstract = jax.eval_shape(functools.partial(steps.create_train_state, config), jax.random.PRNGKey(0))
  # Predict's read-only restore skips the damaged step and changes nothing.
  assert checkpoints.Checkpointer(workdir, read_only=True).restore_params(abstract.params)[0] == restored_step
  assert file_contents(ckpt_dir) == before
  # Training's restore also moves the damaged step aside, so that it can be saved anew.
  ckpt = checkpoints.Checkpointer(workdir)
  step, _ = ckpt.restore_latest(abstract)
  ckpt.close()
  assert step == restored_step
  after = file_contents(ckpt_dir)
  moved = f"{NUM_STEPS}{os.sep}"
  for path, content in before.items():
    if restored_step != NUM_STEPS and path.startswith(moved):
      path = f"{NUM_STEPS}.unrestorable{os.sep}{path[len(moved):]}"
    assert after.get(path) == content, f"{path} was changed or deleted"
  if restored_step != NUM_STEPS:
    assert "cannot be restored" in caplog.text and "moved to" in caplog.text


@pytest.mark.slow
def test_rerun_on_a_damaged_latest_checkpoint_retrains_it_bitwise_identical(tmp_path, reference, xla_cache):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference["workdir"], workdir)
  step_dir = os.path.join(checkpoints.checkpoint_dir(workdir), str(NUM_STEPS))
  _truncate_arrays(step_dir)
  damaged = file_contents(step_dir)

  run = Training(workdir, env=xla_cache)
  assert run.finish() == 0, run.log()
  assert run.logged(f"Checkpoint step {NUM_STEPS} in") and run.logged("Resuming from step 20"), run.log()
  assert file_contents(step_dir + ".unrestorable") == damaged
  step, state = final_state(workdir)
  assert step == NUM_STEPS
  assert_bitwise_equal(reference["state"], state)


# --- NaN / Inf --------------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_loss_exits_3_naming_the_last_good_checkpoint_and_halt_on_nan_false_trains_on(
    tmp_path, reference, xla_cache):
  workdir = str(tmp_path / "run")
  # Adam's first step of size 1e9 makes the second loss overflow; checkpoints every step.
  nan_flags = ("--config.learning_rate=1e9", "--config.log_every_steps=1",
               "--config.checkpoint_every_steps=1", "--config.num_train_steps=4")
  unchecked = ("-c", UNCHECKED_OPTIMIZER_MAIN)  # config_checks would refuse the learning rate.
  run = Training(workdir, *nan_flags, env=xla_cache, program=unchecked)
  assert run.finish() == errors.EXIT_NON_FINITE, run.log()
  assert not run.logged("Traceback"), run.log()
  [line] = run.error_lines()
  ckpt_dir = checkpoints.checkpoint_dir(workdir)
  assert "between steps 1 and 2" in line and f"step 1 in {ckpt_dir}" in line, line
  assert checkpoints.Checkpointer(workdir, read_only=True).steps() == [1]  # Nothing non-finite saved.
  step, state = final_state(workdir)
  assert step == 1 and all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))

  run = Training(workdir, *nan_flags, "--config.runtime.halt_on_nan=False", env=xla_cache, program=unchecked)
  assert run.finish() == 0, run.log()
  assert run.logged("Resuming from step 1") and run.logged("Final evaluation at step 4")
  step, state = final_state(workdir)
  assert step == 4 and not all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


# --- A failed checkpoint write ----------------------------------------------------------------


@pytest.mark.slow
def test_failed_checkpoint_write_is_one_error_and_the_previous_step_stays_usable(
    tmp_path, reference, xla_cache):
  """Once step 10 is committed, the process's file size limit is lowered so that writes fail
  as on a full disk: the next checkpoint's array files fail; event files (a few KB) still fit."""
  workdir = str(tmp_path / "run")
  ckpt_dir = checkpoints.checkpoint_dir(workdir)
  run = Training(workdir, env=xla_cache)
  run.wait_until(lambda: os.path.isdir(os.path.join(ckpt_dir, "10")), "commit of step 10")
  resource.prlimit(run.proc.pid, resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))
  assert run.finish() == errors.EXIT_USER_ERROR, run.log()
  [line] = run.error_lines()
  assert line == run.lines[-1].strip(), "the error is not the last word:\n" + run.log()
  assert not any(t in "".join(run.lines) for t in ("Traceback", "Event loop is closed", "Exception ignored")), run.log()
  match = re.search(rf"cannot write a checkpoint in {re.escape(ckpt_dir)} \(File too large\); "
                    r"step (\d+) is intact", line)
  assert match, line
  step, state = final_state(workdir)  # Usable: it restores, as the message says.
  assert step == int(match.group(1)) == int(state.step) and 10 <= step < NUM_STEPS


# --- Bad configuration ------------------------------------------------------------------------


def _under_a_file(tmp_path):
  (tmp_path / "file").write_text("")
  return str(tmp_path / "file" / "run")


@pytest.mark.parametrize("overrides, field", [
    ({"batch_size": 0}, "batch_size"),
    ({"eval_batch_size": -8}, "eval_batch_size"),
    ({"num_train_steps": 0}, "num_train_steps"),
    ({"model.dense_features": -1}, "model.dense_features"),
    ({"model.conv_features": (8, 0)}, "model.conv_features"),
    ({"batch_size": 60_001}, "batch_size"),  # More than the training split holds.
    ({"model.activation": "swishy"}, "model.activation"),
    ({"model.activation": "Dense"}, "model.activation"),  # A flax.linen class, not an activation.
    ({"model.pool_size": (30, 30)}, "model.pool_size"),  # Larger than the image.
    ({"model.pool_size": (2, 2, 2)}, "model.pool_size"),
    ({"model.conv_features": (8,) * 5}, "model.pool_size"),  # Five 2x2 pools of 28x28 leave nothing.
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"learning_rate": 1.0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"learning_rate": float("inf")}, "learning_rate"),
    ({"b1": 1.5}, "b1"),
    ({"b2": 1.0}, "b2"),
    ({"eps": -1.0}, "eps"),
    ({"eps": 0.0}, "eps"),
    ({"dtype": "float16"}, "dtype"),
    ({"data.manual_dir": "/nonexistent/fashion_mnist"}, "data.manual_dir"),
    # Degenerate ends are excluded: uniform targets, a velocity or statistics that never change.
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"optimizer": "sgd", "momentum": 1.0}, "momentum"),
    ({"model.batch_norm": True, "model.batch_norm_momentum": 1.0}, "model.batch_norm_momentum"),
    ({"optimizer": "adamw", "weight_decay": float("inf")}, "weight_decay"),
    ({"grad_clip_norm": float("inf")}, "grad_clip_norm"),
    ({"augment.erase_area": ("a", "b")}, "augment.erase_area"),  # Was a TypeError traceback.
])
def test_bad_config_is_one_line_before_any_work(tmp_path, overrides, field):
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.ConfigError) as raised:
    train.train_and_evaluate(tiny_config(**overrides), workdir)
  assert f"config.{field}=" in str(raised.value) and "\n" not in str(raised.value)
  assert not os.path.exists(workdir)


def test_every_allowed_activation_is_an_elementwise_flax_activation():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
  for name in config_checks.ACTIVATIONS:
    assert np.asarray(getattr(nn, name)(x)).shape == x.shape, name


BLOCKED = {"jax": "jax", "flax": "flax", "tensorflow": "tensorflow"}


@pytest.mark.parametrize("flags, expected", [
    (("--config.model.activation=Dense",), "config.model.activation='Dense'"),
    (("--config.learning_rate=nan",), "config.learning_rate=nan"),
    (("--config.model.pool_size=(30,30)",), "config.model.pool_size=(30, 30)"),
])
def test_config_checks_run_before_jax_flax_or_tensorflow_are_imported(tmp_path, flags, expected):
  """Those packages are made unimportable: the check must refuse the config before any of them loads."""
  for name in BLOCKED:
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} was imported')\n")
  run = Training(str(tmp_path / "run"), *flags, env={"PYTHONPATH": os.pathsep.join([str(tmp_path), REPO])})
  assert run.finish() == errors.EXIT_USER_ERROR, run.log()
  [line] = run.error_lines()
  assert expected in line and "was imported" not in run.log(), run.log()
  assert not os.path.exists(tmp_path / "run")


def test_unwritable_workdir_is_one_line(tmp_path):
  workdir = _under_a_file(tmp_path)
  with pytest.raises(errors.ConfigError, match="--workdir"):
    train.train_and_evaluate(tiny_config(), workdir)


@pytest.mark.parametrize("flags, env, expected", [
    (("--config.batchsize=10",), None, "unknown config field 'batchsize'"),  # Fails in flag parsing.
    (("--config.batch_size=101",), {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
     "config.batch_size=101 is not divisible by the 2 devices"),
])
def test_bad_command_line_exits_2_with_one_line(tmp_path, flags, env, expected):
  workdir = str(tmp_path / "run")
  run = Training(workdir, *flags, env=env)
  assert run.finish() == errors.EXIT_USER_ERROR, run.log()
  assert not run.logged("Traceback"), run.log()
  [line] = run.error_lines()
  assert expected in line
  assert not os.path.exists(workdir)

# --- Image bytes: the predict path's loader -----------------------------------------------------
# Valid files of many formats made here with Pillow, then truncated, bit-flipped, spliced, or
# given huge declared sizes, and random bytes behind real magic numbers: each must give a
# [28, 28, 1] float32 array in [0, 1] or one UserError; any other exception is a traceback.

FUZZ = settings(max_examples=1500, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
  buf = io.BytesIO()
  im.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def _seed_files() -> list:
  """Small valid files in the formats and modes a user is likely to pass, and some odd ones."""
  rng = np.random.default_rng(0)
  gray = Image.fromarray(rng.integers(0, 256, (20, 13), np.uint8))
  rgb = Image.fromarray(rng.integers(0, 256, (9, 31, 3), np.uint8))
  rgba = Image.fromarray(rng.integers(0, 256, (28, 28, 4), np.uint8))
  palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
  sixteen = Image.fromarray(rng.integers(0, 2**16, (17, 11), np.uint16))  # Mode I;16.
  mono = gray.convert("1")
  return [
      _encode(gray, "PNG"), _encode(rgba, "PNG"), _encode(palette, "PNG", transparency=0),
      _encode(sixteen, "PNG"), _encode(rgb, "JPEG", quality=80), _encode(gray, "JPEG", progressive=True),
      _encode(palette, "GIF"), _encode(rgb, "TIFF"), _encode(rgba, "TIFF", compression="tiff_lzw"),
      _encode(mono, "TIFF", compression="group4"), _encode(rgb, "BMP"), _encode(rgba, "WEBP", lossless=True),
      _encode(gray, "PPM"), _encode(rgb, "ICO"), _encode(rgba, "TGA"), _encode(gray, "PCX"),
      _encode(rgb, "SGI"), _encode(mono, "XBM"), _encode(rgb, "QOI"),
  ]


SEEDS = _seed_files()


def _check(data: bytes) -> None:
  """The loader's whole contract on one input."""
  try:
    out = images.load_image(data)
  except errors.UserError as e:
    message = str(e)
    assert message and "\n" not in message, f"error message is not one line: {message!r}"
    return
  assert out.shape == (28, 28, 1) and out.dtype == np.float32, (out.shape, out.dtype)
  assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0


def test_every_seed_file_loads():
  """The mutations start from files the loader accepts, so they probe its decoders, not one rejection."""
  for data in SEEDS:
    out = images.load_image(data)
    assert out.shape == (28, 28, 1)


@st.composite
def _mutated(draw):
  data = bytearray(draw(st.sampled_from(SEEDS)))
  for _ in range(draw(st.integers(1, 4))):
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "splice"]))
    pos = draw(st.integers(0, max(0, len(data) - 1)))
    if kind == "truncate":
      del data[pos:]
    elif kind == "flip" and data:
      data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "overwrite":
      chunk = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                    b"\x80\x00\x00\x00", b"\xff\xff", b"\x00"]))
      data[pos:pos + len(chunk)] = chunk
    elif kind == "insert":
      data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
      del data[pos:pos + draw(st.integers(1, 64))]
    else:  # A piece of another format's file: headers that disagree with the body.
      other = draw(st.sampled_from(SEEDS))
      start = draw(st.integers(0, len(other) - 1))
      data[pos:pos + 32] = other[start:start + 32]
  return bytes(data)


@FUZZ
@given(_mutated())
def test_mutated_files_load_or_fail_cleanly(data):
  _check(data)


_MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"GIF87a", b"II*\x00", b"MM\x00*",
           b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8L", b"P5\n", b"P6\n", b"\x00\x00\x01\x00", b"qoif", b"\x01\xda",
           b"\x0a\x05\x01\x08", b"#define ", b""]


@settings(FUZZ, max_examples=1000)
@given(st.sampled_from(_MAGICS), st.binary(max_size=300))
def test_random_bytes_behind_real_magic_numbers_fail_cleanly(magic, body):
  _check(magic + body)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
  return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _huge_declared_sizes() -> list:
  """Valid headers (checksums included) declaring sizes far past any memory, over tiny bodies."""
  out = []
  for width, height in [(2**31 - 1, 2**31 - 1), (2**20, 2**20), (1, 2**31 - 1), (70_000, 70_000)]:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    out.append(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
               + _png_chunk(b"IEND", b""))
  for side in (0xFFFF, 0x8000):
    out.append(b"GIF89a" + struct.pack("<HH", side, side) + b"\x00\x00\x00" + b"," + struct.pack(
        "<HHHH", 0, 0, side, side) + b"\x00\x02\x02\x44\x01\x00;")
  bmp = bytearray(_encode(Image.new("L", (4, 4)), "BMP"))
  bmp[18:26] = struct.pack("<ii", 2**30, -(2**30))
  out.append(bytes(bmp))
  jpeg = bytearray(_encode(Image.new("L", (8, 8)), "JPEG"))
  sof = jpeg.index(b"\xff\xc0")
  jpeg[sof + 5:sof + 9] = struct.pack(">HH", 0xFFFF, 0xFFFF)
  out.append(bytes(jpeg))
  tiff = bytearray(_encode(Image.new("L", (4, 4)), "TIFF"))
  for tag in (256, 257):  # ImageWidth, ImageLength as LONG values in the first IFD.
    ifd = struct.unpack("<I", tiff[4:8])[0]
    for i in range(struct.unpack("<H", tiff[ifd:ifd + 2])[0]):
      entry = ifd + 2 + 12 * i
      if struct.unpack("<H", tiff[entry:entry + 2])[0] == tag:
        tiff[entry + 2:entry + 12] = struct.pack("<HII", 4, 1, 2**31 - 1)
  out.append(bytes(tiff))
  return out


@pytest.mark.parametrize("data", _huge_declared_sizes(), ids=lambda d: d[:4].hex())
def test_huge_declared_sizes_are_refused_without_allocating(data):
  with pytest.raises(errors.UserError):
    images.load_image(data)
