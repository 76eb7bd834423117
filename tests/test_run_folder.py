"""A run's folder: one writer at a time; config.json written atomically and read back with today's defaults."""

import contextlib
import os
import subprocess
import sys

import pytest

from fmnist_jax import errors
from fmnist_jax import run_folder
from fmnist_jax import train
from tests.conftest import REPO, run_module, tiny_config

NO_TF = {"PYTHONPATH": os.pathsep.join([os.path.join(REPO, "tests", "no_tensorflow"), REPO])}


def test_config_saved_before_newer_fields_takes_their_defaults(tmp_path):
  (tmp_path / "config.json").write_text('{"seed": 7, "data": {"dataset": "fashion_mnist", "manual_dir": "/m"}}')
  config = run_folder.load_config(str(tmp_path))
  assert config.seed == 7 and config.data.manual_dir == "/m"  # Saved values win ...
  assert config.data.source == "auto" and config.runtime.pool_impl == "auto"  # ... missing ones are base.py's.
  assert config.batch_size == run_folder.default_config().batch_size


def test_shipped_pretrained_config_loads_whole():
  config = run_folder.load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "pretrained"))
  assert set(json_keys(run_folder.default_config())) <= set(json_keys(config))


def json_keys(config, prefix=""):
  for key, value in config.items():
    yield from json_keys(value, f"{prefix}{key}.") if hasattr(value, "items") else [prefix + key]


def test_config_that_is_not_an_object_is_a_clear_error(tmp_path):
  (tmp_path / "config.json").write_text("[1, 2]")
  with pytest.raises(errors.CheckpointError, match="not a config"):
    run_folder.load_config(str(tmp_path))


# --- One writer per run folder ------------------------------------------------------------------

HOLD = ("import sys, time\nfrom fmnist_jax import run_folder\nfrom tests.conftest import tiny_config\n"
        "with run_folder.owned(tiny_config(), sys.argv[1]):\n  print('held', flush=True)\n  time.sleep(600)\n")


@contextlib.contextmanager
def held_by_another_process(workdir):
  """A process holding `workdir`'s lock until the block ends (then killed with SIGKILL)."""
  proc = subprocess.Popen([sys.executable, "-c", HOLD, workdir], cwd=REPO, stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": REPO})
  try:
    assert proc.stdout.readline().strip() == "held"
    yield proc.pid
  finally:
    proc.kill()
    proc.wait()


def folder_contents(root):
  return sorted(os.path.relpath(os.path.join(d, n), root) for d, dirs, names in os.walk(root) for n in dirs + names)


def test_a_second_writer_is_refused_naming_the_holder_and_writes_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  with held_by_another_process(workdir) as pid:
    before = folder_contents(workdir)
    with pytest.raises(errors.ConfigError, match=rf"is being trained by process {pid} .*choose another --workdir"):
      train.train_and_evaluate(tiny_config(), workdir)
    assert folder_contents(workdir) == before == [run_folder.LOCK_FILE]
  with run_folder.owned(tiny_config(), workdir):  # kill -9 left nothing stale ...
    with run_folder.owned(tiny_config(), workdir):  # ... and the owner may take it again.
      pass


def test_cli_on_a_folder_being_trained_is_one_line_exit_2(tmp_path):
  workdir = str(tmp_path / "run")
  with held_by_another_process(workdir) as pid:
    result = run_module(["-m", "fmnist_jax.main", "--config=experiments/base.py", f"--workdir={workdir}",
                         "--config.data.source=idx"], env=NO_TF)
    assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-2000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"process {pid}" in line and "Traceback" not in result.stderr
    assert folder_contents(workdir) == [run_folder.LOCK_FILE]


# --- Resuming and the run's history -------------------------------------------------------------


def test_resume_may_change_only_resume_safe_fields(tmp_path):
  workdir = str(tmp_path)
  run_folder.save_config(tiny_config(), workdir)
  run_folder.check_resume(tiny_config(learning_rate=3e-3, num_train_steps=90, **{"runtime.fuse_steps": "on"}), workdir)
  with pytest.raises(errors.CheckpointError) as raised:
    run_folder.check_resume(tiny_config(batch_size=50, **{"model.conv_features": (8,)}), workdir)
  message = str(raised.value)
  assert "batch_size=100 (now 50)" in message and "model.conv_features=[8, 16] (now [8])" in message
  assert "--config.batch_size=100 --config.model.conv_features='(8, 16)'" in message and "new --workdir" in message
  for field, value in (("seed", 1), ("data.dataset", "mnist"), ("dtype", "bfloat16")):
    with pytest.raises(errors.CheckpointError, match=f"{field}="):
      run_folder.check_resume(tiny_config(**{field: value}), workdir)


def test_a_field_new_to_the_project_must_match_unless_listed(tmp_path, monkeypatch):
  """A run saved before `model.name` existed resumes under its default; another value is refused."""
  workdir = str(tmp_path)
  run_folder.save_config(tiny_config(), workdir)
  with_new_field = run_folder.default_config
  def defaults():
    config = with_new_field()
    config.model.name = "cnn"
    return config
  monkeypatch.setattr(run_folder, "default_config", defaults)
  config = tiny_config()
  config.model.name = "cnn"
  run_folder.check_resume(config, workdir)
  config.model.name = "resnet"
  with pytest.raises(errors.CheckpointError, match="model.name='cnn' \\(now 'resnet'\\)"):
    run_folder.check_resume(config, workdir)


@pytest.mark.slow
def test_history_keeps_every_start_and_a_finished_rerun_rewrites_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(num_train_steps=10), workdir)
  with pytest.raises(errors.CheckpointError, match="batch_size=100 \\(now 50\\)"):
    train.train_and_evaluate(tiny_config(num_train_steps=20, batch_size=50), workdir)
  train.train_and_evaluate(tiny_config(num_train_steps=20, learning_rate=3e-3), workdir)
  saved = (tmp_path / "run" / run_folder.CONFIG_FILE).read_bytes()
  history = (tmp_path / "run" / run_folder.HISTORY_FILE).read_bytes()
  train.train_and_evaluate(tiny_config(num_train_steps=5), workdir)  # Finished: evaluates only.
  assert (tmp_path / "run" / run_folder.CONFIG_FILE).read_bytes() == saved
  assert (tmp_path / "run" / run_folder.HISTORY_FILE).read_bytes() == history
  records = run_folder.read_history(workdir)
  assert [r["steps"] for r in records] == [[0, 10], [10, 20]]
  assert [r["config"]["learning_rate"] for r in records] == [1e-3, 3e-3]
  assert set(records[0]["versions"]) == set(run_folder.VERSIONED_PACKAGES) and records[0]["versions"]["jax"]
  assert run_folder.load_config(workdir).learning_rate == 3e-3


def test_a_sweep_folder_given_as_a_run_is_named_as_such_with_a_point(tmp_path):
  for name in ("seed=0", "seed=1"):
    (tmp_path / name).mkdir()
    run_folder.save_config(tiny_config(), str(tmp_path / name))
  with pytest.raises(errors.CheckpointError) as raised:
    run_folder.load_config(str(tmp_path))
  assert str(raised.value) == (f"--workdir={tmp_path} is a sweep folder (2 runs below it); point --workdir at "
                               f"one of them, e.g. --workdir={tmp_path / 'seed=0'}")


def test_a_data_error_on_a_new_workdir_leaves_nothing(tmp_path):
  workdir = tmp_path / "new" / "run"
  with pytest.raises(errors.DataError) as raised:
    train.train_and_evaluate(tiny_config(**{"data.idx_dirs": (str(tmp_path / "no_data"),)}), str(workdir))
  assert "network" not in str(raised.value)  # data.source=idx never downloads.
  assert not (tmp_path / "new").exists()


def test_a_refused_resume_leaves_the_lock_file_as_it_was(tmp_path):
  workdir = str(tmp_path)
  run_folder.save_config(tiny_config(), workdir)
  (tmp_path / run_folder.LOCK_FILE).write_text("12345\n")  # The PID of the run that trained it.
  before = folder_contents(workdir)
  with pytest.raises(errors.CheckpointError):
    with run_folder.owned(tiny_config(seed=1), workdir):
      pass
  assert (tmp_path / run_folder.LOCK_FILE).read_text() == "12345\n"
  assert folder_contents(workdir) == before
