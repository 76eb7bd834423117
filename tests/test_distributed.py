"""Runs of many processes, for real: 2 `python -m fmnist_jax.main --distributed` processes on localhost
(one CPU device each, gloo collectives) train one run data-parallel over the global mesh into one
shared workdir, as the processes of a multi-host GPU or TPU run would.

Every process writes its output to a file and every wait is bounded: a test that would hang fails.
"""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fmnist_jax import checkpoints
from fmnist_jax import run_folder
from fmnist_jax import train
from tests.conftest import data_dir, REPO, run_module, tiny_config

NO_TENSORFLOW = os.path.join(REPO, "tests", "no_tensorflow")
START_TIMEOUT_S = 240  # Until a process logs a given line: generous, other jobs may share the 2 cores.
EXIT_TIMEOUT_S = 90  # From a signal (or a kill of its peer) to a process's exit.
HEARTBEAT_S = 10  # config.runtime.distributed_heartbeat_timeout_s of these tests (default 100).


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def tiny_flags(num_steps: int = 30):
  """Command-line flags giving tests.conftest.tiny_config() (with `num_steps`)."""
  return ["--config=experiments/base.py", "--config.model.conv_features=(8,16)", "--config.model.dense_features=32",
          "--config.batch_size=100", f"--config.num_train_steps={num_steps}", "--config.log_every_steps=10",
          "--config.eval_every_steps=10", "--config.checkpoint_every_steps=10", "--config.data.source=idx",
          f"--config.data.idx_dirs=('{data_dir()}',)",
          f"--config.runtime.distributed_heartbeat_timeout_s={HEARTBEAT_S}"]


def env():
  """Subprocess environment: this tree, no TensorFlow (as on the GPU hosts, and faster), 1 CPU device."""
  out = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, NO_TENSORFLOW]), "JAX_PLATFORMS": "cpu"}
  out.pop("XLA_FLAGS", None)
  return out


class Process:
  """One process of a run; its stdout and stderr go to a file, read back by `text`."""

  def __init__(self, args, log_path: str):
    self.log_path = log_path
    with open(log_path, "w") as log:
      self.popen = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env(), stdout=log,
                                    stderr=subprocess.STDOUT, text=True)
    self.pid = self.popen.pid

  def text(self) -> str:
    with open(self.log_path) as f:
      return f.read()

  def wait_for(self, pattern: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, self.text()):
      assert self.popen.poll() is None, f"exited {self.popen.returncode} before {pattern!r}:\n{self.text()[-3000:]}"
      assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s:\n{self.text()[-3000:]}"
      time.sleep(0.5)

  def wait(self, timeout: float) -> int:
    try:
      return self.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.popen.kill()
      self.popen.wait()
      pytest.fail(f"process {self.pid} still running after {timeout} s:\n{self.text()[-3000:]}")


@pytest.fixture
def processes():
  """Every Process a test starts; killed at the end whatever happened."""
  started = []
  yield started
  for p in started:
    if p.popen.poll() is None:
      p.popen.kill()
      p.popen.wait()


def launch(processes, tmp_path, workdir: str, *extra, num: int = 2, module: str = "fmnist_jax.main",
           name: str = "run"):
  """`num` processes of one --distributed run of `module`, joined through a free localhost port."""
  port = free_port()
  out = []
  for i in range(num):
    args = ["-m", module, f"--workdir={workdir}", *extra, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
            f"--num_processes={num}", f"--process_id={i}"]
    out.append(Process(args, str(tmp_path / f"{name}_{i}.log")))
  processes.extend(out)
  return out


def wait_all(procs, timeout: float = START_TIMEOUT_S * 2):
  codes = [p.wait(timeout) for p in procs]
  return codes


def event_file_pids(workdir: str):
  """The PIDs in the names of the TensorBoard event files (events.out.tfevents.<time>.<host>.<pid>.<n>)."""
  files = glob.glob(os.path.join(workdir, "*", "events.out.tfevents.*"))
  return {int(os.path.basename(p).split(".")[-2]) for p in files}


def latest_step(workdir: str) -> int:
  return checkpoints.Checkpointer(workdir, read_only=True).steps()[0]


@pytest.mark.slow
def test_two_processes_train_one_run_like_one_process(tmp_path, processes):
  shared = str(tmp_path / "two")
  procs = launch(processes, tmp_path, shared, *tiny_flags())
  assert wait_all(procs) == [0, 0], procs[0].text()[-3000:] + procs[1].text()[-3000:]
  for p in procs:
    assert "Process %d of 2" % procs.index(p) in p.text() and "on 2 cpu device(s)" in p.text()
  # Same global batch of 100 over 2 devices: the parameters of a one-process run, up to float rounding.
  single = str(tmp_path / "one")
  metrics = train.train_and_evaluate(tiny_config(), single)
  two, one = checkpoints.restore_for_inference(shared), checkpoints.restore_for_inference(single)
  assert two.step == one.step == 30
  for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  final = re.search(r"Final evaluation at step 30: accuracy ([\d.]+)", procs[1].text())
  assert abs(float(final.group(1)) - metrics["accuracy"]) < 2e-3
  # Orbax saved collectively (each process wrote its part of every step); only process 0 wrote the rest.
  assert checkpoints.Checkpointer(shared, read_only=True).steps() == [30, 20, 10]
  parts = glob.glob(os.path.join(shared, "checkpoints", "30", "params", "ocdbt.process_*"))
  assert {os.path.basename(p) for p in parts} == {"ocdbt.process_0", "ocdbt.process_1"}
  history = run_folder.read_history(shared)
  assert [(r["pid"], r["steps"]) for r in history] == [(procs[0].pid, [0, 30])]
  assert json.load(open(os.path.join(shared, "config.json")))["num_train_steps"] == 30
  assert event_file_pids(shared) == {procs[0].pid}
  assert len(glob.glob(os.path.join(shared, "train", "events.*"))) == 1
  assert open(os.path.join(shared, run_folder.LOCK_FILE)).read().strip() == str(procs[0].pid)


@pytest.mark.slow
def test_a_held_workdir_stops_every_process_of_a_run(tmp_path, processes):
  workdir = str(tmp_path / "run")
  with run_folder.owned(tiny_config(), workdir):  # Another run (this test) trains there.
    procs = launch(processes, tmp_path, workdir, *tiny_flags())
    assert wait_all(procs, EXIT_TIMEOUT_S * 2) == [2, 2]
  first, second = (p.text().strip().splitlines()[-1] for p in procs)
  assert first.startswith("error: --workdir=") and f"being trained by process {os.getpid()}" in first
  assert second.startswith("error: process 0 of this run cannot train in --workdir=")
  assert not os.path.exists(os.path.join(workdir, "config.json"))


@pytest.mark.slow
def test_sigterm_to_every_process_stops_the_run_and_the_rerun_resumes(tmp_path, processes):
  workdir = str(tmp_path / "run")
  procs = launch(processes, tmp_path, workdir, *tiny_flags(num_steps=5000))
  procs[0].wait_for(r"step 10/5000")
  # An unrelated run is refused while the two processes train (process 0 holds the lock).
  other = run_module(["-m", "fmnist_jax.main", f"--workdir={workdir}", *tiny_flags()], env=env(),
                     timeout=START_TIMEOUT_S)
  assert other.returncode == 2 and f"being trained by process {procs[0].pid}" in other.stderr, other.stderr[-2000:]
  # A scheduler signals every process, not at the same moment: here process 1 only once process 0 is
  # already stopping. Both stop after the same step, and process 1's late signal ends nothing early.
  procs[0].popen.send_signal(signal.SIGTERM)
  procs[0].wait_for(r"error: stopped by SIGTERM", EXIT_TIMEOUT_S)
  procs[1].popen.send_signal(signal.SIGTERM)
  assert wait_all(procs, EXIT_TIMEOUT_S) == [75, 75], [p.text()[-1500:] for p in procs]
  stopped = [re.search(r"error: stopped by (SIGTERM|a signal to another process) at step (\d+)", p.text())
             for p in procs]
  assert all(stopped) and stopped[0].group(2) == stopped[1].group(2), [p.text()[-1500:] for p in procs]
  step = int(stopped[0].group(2))
  assert latest_step(workdir) == step
  again = launch(processes, tmp_path, workdir, *tiny_flags(num_steps=step + 10), name="rerun")
  assert wait_all(again) == [0, 0], again[0].text()[-3000:]
  for p in again:
    assert f"Resuming from step {step}" in p.text()
  assert [r["steps"] for r in run_folder.read_history(workdir)] == [[0, 5000], [step, step + 10]]


@pytest.mark.slow
def test_kill_9_of_either_process_ends_the_other_at_once_and_the_rerun_resumes(tmp_path, processes):
  workdir = str(tmp_path / "run")
  procs = launch(processes, tmp_path, workdir, *tiny_flags(num_steps=5000))
  procs[0].wait_for(r"step 20/5000")
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "10"))
  procs[1].popen.kill()
  start = time.monotonic()
  assert procs[0].wait(EXIT_TIMEOUT_S) == 75
  assert time.monotonic() - start < HEARTBEAT_S * 3
  last = procs[0].text().strip().splitlines()[-1]
  assert last.startswith("error: process 0 of 2: another process of this run stopped") and "resume" in last, last
  # The rerun resumes; then process 0, the coordinator, is killed: JAX itself ends process 1 at once.
  step = latest_step(workdir)
  again = launch(processes, tmp_path, workdir, *tiny_flags(num_steps=5000), name="rerun")
  again[1].wait_for(rf"Resuming from step {step}")
  again[1].wait_for(rf"step {step + 10}/5000")
  again[0].popen.kill()
  start = time.monotonic()
  assert again[1].wait(EXIT_TIMEOUT_S) != 0
  assert time.monotonic() - start < HEARTBEAT_S * 3
  assert "another task died" in again[1].text() or "another process of this run stopped" in again[1].text()
  step = latest_step(workdir)
  last = launch(processes, tmp_path, workdir, *tiny_flags(num_steps=step + 10), name="last")
  assert wait_all(last) == [0, 0], last[0].text()[-3000:]
  assert f"Resuming from step {step}" in last[1].text()


@pytest.mark.slow
def test_a_sweep_split_over_two_processes_trains_every_point_once(tmp_path, processes):
  sweep = tmp_path / "seeds.py"
  sweep.write_text("def get_sweep():\n  return [{'seed': s} for s in range(4)]\n")
  workdir = str(tmp_path / "sweep")
  flags = [f"--sweep={sweep}", "--vmap_members=1", *tiny_flags(num_steps=10)]
  flags = [f for f in flags if "heartbeat" not in f]
  parts = [Process(["-m", "fmnist_jax.sweep", f"--workdir={workdir}", *flags, f"--part={i}/2"],
                   str(tmp_path / f"part_{i}.log")) for i in range(2)]
  processes.extend(parts)
  assert wait_all(parts) == [0, 0], parts[0].text()[-3000:] + parts[1].text()[-3000:]
  names = [f"seed={s}" for s in range(4)]
  for name in names:
    point = os.path.join(workdir, name)
    assert json.load(open(os.path.join(point, "sweep_result.json")))["name"] == name
    assert len(run_folder.read_history(point)) == 1, name  # Trained once, by one of the two.
  trained_by = {name: run_folder.read_history(os.path.join(workdir, name))[0]["pid"] for name in names}
  assert set(trained_by.values()) == {parts[0].pid, parts[1].pid}
  with open(os.path.join(workdir, "results.csv")) as f:
    assert sorted(line.split(",")[0] for line in f.read().splitlines()[1:]) == names


@pytest.mark.slow
def test_a_distributed_sweep_trains_its_points_data_parallel_and_process_0_writes_the_results(tmp_path, processes):
  sweep = tmp_path / "seeds.py"
  sweep.write_text("def get_sweep():\n  return [{'seed': s} for s in range(2)]\n")
  workdir = str(tmp_path / "sweep")
  procs = launch(processes, tmp_path, workdir, f"--sweep={sweep}", "--vmap_members=2", *tiny_flags(num_steps=10),
                 module="fmnist_jax.sweep")
  assert wait_all(procs) == [0, 0], procs[0].text()[-3000:] + procs[1].text()[-3000:]
  for name in ("seed=0", "seed=1"):
    point = os.path.join(workdir, name)
    record = json.load(open(os.path.join(point, "sweep_result.json")))
    assert record["trained_with"] == 2 and record["error"] is None
    assert [r["pid"] for r in run_folder.read_history(point)] == [procs[0].pid]
    assert event_file_pids(point) == {procs[0].pid}
  assert os.path.isfile(os.path.join(workdir, "results.csv"))
  assert "vmapped" in procs[1].text() and "on 2 cpu device(s)" in procs[1].text()


@pytest.mark.slow
def test_distributed_flags_are_checked_in_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  alone = run_module(["-m", "fmnist_jax.main", f"--workdir={workdir}", *tiny_flags(), "--num_processes=2"], env=env())
  assert alone.returncode == 2 and alone.stderr.strip().splitlines()[-1] == \
      "error: --num_processes is for a run of many processes; add --distributed"
  undetected = run_module(["-m", "fmnist_jax.main", f"--workdir={workdir}", *tiny_flags(), "--distributed"], env=env())
  last = undetected.stderr.strip().splitlines()[-1]
  assert undetected.returncode == 2 and last.startswith("error: --distributed: ") and "no cluster was detected" in last
  assert "--coordinator_address=HOST:PORT --num_processes=N --process_id=I" in last
