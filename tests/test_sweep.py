"""The sweep runner: definition errors, a 4-point sweep on real data, skipping and resuming points."""

import contextlib
import csv
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from fmnist_jax import checkpoints
from fmnist_jax import errors
from fmnist_jax import sweep
from tests.conftest import final_params, REPO, roll_back, run_module, tiny_config
from tests.test_ensemble import assert_params_close
from tests.test_ensemble import METRIC_ATOL
from tests.test_run_folder import folder_contents
from tests.test_run_folder import held_by_another_process

FOUR_POINTS = """
def get_sweep():
  return [{"learning_rate": lr, "seed": seed} for lr in (1e-3, 3e-3) for seed in (0, 1)]
"""
SWEEP_STEPS = 20  # Two checkpoints (every 10) per point.


def sweep_config():
  """Smaller than tiny: evaluating 4 models on the 10,000 test images dominates this test's time."""
  return tiny_config(num_train_steps=SWEEP_STEPS, eval_every_steps=SWEEP_STEPS,
                     **{"model.conv_features": (4, 8), "model.dense_features": 16})


def write_sweep(tmp_path, text, name="sweep_def.py"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize("text, message", [
    (None, "no such file"),
    ("def get_sweep(:\n", "cannot be loaded (SyntaxError"),
    ("import no_such_module_xyz\n", "cannot be loaded (ModuleNotFoundError"),
    ("POINTS = [{}]\n", "has no get_sweep()"),
    ("def get_sweep():\n  raise KeyError('line one\\nline two')\n", "get_sweep() failed (KeyError: 'line one"),
    ("def get_sweep():\n  return {'seed': 1}\n", "return a non-empty list"),
    ("def get_sweep():\n  return []\n", "return a non-empty list"),
    ("def get_sweep():\n  return [{'seed': 1}, 3]\n", "point 1 is 3"),
])
def test_sweep_file_errors_are_one_line(tmp_path, text, message):
  path = str(tmp_path / "missing.py") if text is None else write_sweep(tmp_path, text)
  with pytest.raises(errors.ConfigError) as e:
    sweep.load_sweep(path)
  assert message in str(e.value) and path in str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("point, message", [
    ({"learning_rat": 0.1}, "unknown config key 'learning_rat'; known keys: "),
    ({"model.dense_feature": 8}, "unknown config key 'model.dense_feature'; known keys under model: "),
    ({"seed.x": 1}, "unknown config key 'seed.x'"),
    ({"batch_size": "large"}, "batch_size='large' does not fit the config"),
    ({"batch_size": 0}, "config.batch_size=0 must be a positive integer"),
])
def test_bad_points_are_refused_before_training(tmp_path, point, message):
  path = write_sweep(tmp_path, f"def get_sweep():\n  return [{{}}, {point!r}]\n")
  with pytest.raises(errors.ConfigError) as e:
    sweep.plan(tiny_config(), path, str(tmp_path / "runs"), num_devices=1)
  assert message in str(e.value) and "point 1" in str(e.value)
  assert not (tmp_path / "runs").exists()


def test_duplicate_points_are_refused(tmp_path):
  path = write_sweep(tmp_path, "def get_sweep():\n  return [{'seed': 1}, {'seed': 2}, {'seed': 1}]\n")
  with pytest.raises(errors.ConfigError, match="points 0 and 2 are both seed=1"):
    sweep.plan(tiny_config(), path, str(tmp_path / "runs"), num_devices=1)


def test_point_names_are_readable_folder_names():
  assert sweep.point_name({"learning_rate": 0.001, "seed": 1}) == "learning_rate=0.001,seed=1"
  assert sweep.point_name({"model.conv_features": (8, 16)}) == "model.conv_features=8x16"
  assert sweep.point_name({"data.data_dir": "/a b"}) == "data.data_dir=_a_b"
  assert sweep.point_name({}) == "base"


def test_groups_vmap_only_points_that_share_a_program():
  points = [sweep.Point(str(i), {}, config, "") for i, config in enumerate([
      tiny_config(seed=0), tiny_config(batch_size=50), tiny_config(seed=1, learning_rate=0.1),
      tiny_config(seed=2), tiny_config(seed=3)])]
  assert [[p.name for p in g] for g in sweep.groups(points, vmap_members=3)] == [["0", "2", "3"], ["4"], ["1"]]
  assert [len(g) for g in sweep.groups(points, vmap_members=1)] == [1] * 5


def test_sweep_cli_reports_an_unknown_key_in_one_line(tmp_path):
  path = write_sweep(tmp_path, "def get_sweep():\n  return [{'model.dense_feature': 8}]\n")
  r = run_module(["-m", "fmnist_jax.sweep", "--config=experiments/base.py", f"--sweep={path}",
                  f"--workdir={tmp_path / 'runs'}"], timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith("error: --sweep=")
  assert "unknown config key 'model.dense_feature'" in r.stderr and "Traceback" not in r.stderr


@contextlib.contextmanager
def compiled_programs():
  """Names of the programs XLA compiles inside the block (jax logs each with log_compiles on)."""
  names = []

  class Collect(logging.Handler):

    def emit(self, record):
      message = record.getMessage()
      if message.startswith("Finished XLA compilation of "):
        names.append(message.split()[4])

  handler = Collect(level=logging.WARNING)
  jax_logger = logging.getLogger("jax")
  jax_logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      yield names
  finally:
    jax_logger.removeHandler(handler)


@pytest.fixture(scope="module")
def four_point_sweep(tmp_path_factory):
  """(workdir, sweep file, records, compiled program names) of 2 learning rates x 2 seeds, trained once
  as two vmapped groups (one per learning rate)."""
  root = tmp_path_factory.mktemp("sweep")
  path = write_sweep(root, FOUR_POINTS)
  workdir = str(root / "runs")
  with compiled_programs() as names:
    records = sweep.run_sweep(sweep_config(), path, workdir, vmap_members=2)
  return workdir, path, records, names


@pytest.mark.slow
def test_sweep_trains_every_point_and_writes_one_row_each(four_point_sweep):
  workdir, _, records, _ = four_point_sweep
  with open(os.path.join(workdir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [(float(r["learning_rate"]), int(r["seed"])) for r in rows] == [(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)]
  assert all(r["status"] == "ok" and r["trained_with"] == "2" for r in rows)
  assert all(float(r["train_time_s"]) > float(r["compile_time_s"]) >= 0 for r in rows)
  assert records[0]["compile_time_s"] > 0  # The first group compiled; the second reused its programs.
  accuracies = [float(r["accuracy"]) for r in rows]
  assert min(accuracies) > 0.3 and len(set(accuracies)) == 4  # Learned, and four different runs.
  with open(os.path.join(workdir, "results.md")) as f:
    table = [line for line in f if line.startswith("| learning_rate=")]
  assert len(table) == 4
  with open(os.path.join(workdir, "results.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  for r in records:
    point = os.path.join(workdir, r["name"])
    assert checkpoints.Checkpointer(point, read_only=True).steps()[0] == SWEEP_STEPS
    for sub in ("train", "eval"):
      assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(point, sub)))


@pytest.mark.slow  # Trains whole runs.
def test_learning_rates_and_seeds_share_one_compiled_train_program(four_point_sweep):
  # The second group (the other learning rate) reuses the first group's programs.
  names = four_point_sweep[3]
  assert sum("train_steps" in n for n in names) == 1, names
  assert sum("_evaluate_members" in n for n in names) == 1, names


@pytest.mark.slow
def test_rerun_skips_finished_points_and_resumes_killed_ones(four_point_sweep, tmp_path, caplog):
  source, path, records, _ = four_point_sweep
  workdir = str(tmp_path / "runs")
  shutil.copytree(source, workdir)
  names = [r["name"] for r in records]
  killed, finished = names[2], names[:2] + names[3:]
  before = final_params(os.path.join(workdir, killed))[1]
  finished_mtimes = [os.path.getmtime(os.path.join(workdir, n, sweep.RESULT_FILE)) for n in finished]
  # As if killed after its step-10 checkpoint: no result file, no later checkpoint.
  point = os.path.join(workdir, killed)
  os.remove(os.path.join(point, sweep.RESULT_FILE))
  roll_back(point, SWEEP_STEPS // 2)
  # One at a time this time (groups of 1), so the single-run path resumes what the vmapped one
  # saved; in two parts, as two processes would: part 1/2 has groups 1 and 3, both finished.
  assert sweep.run_sweep(sweep_config(), path, workdir, vmap_members=1, part=(1, 2)) == [
      r for r in records if r["name"] != killed]
  with caplog.at_level(logging.INFO):
    rerun = sweep.run_sweep(sweep_config(), path, workdir, vmap_members=1, part=(0, 2))
  assert "Resuming from step 10" in caplog.text
  assert sum(f"Point {n} finished earlier: skipped" in caplog.text for n in finished) == 1  # Group 0.
  assert [r for r in rerun if r["name"] != killed] == [r for r in records if r["name"] != killed]
  assert finished_mtimes == [os.path.getmtime(os.path.join(workdir, n, sweep.RESULT_FILE)) for n in finished]
  assert rerun[2]["trained_with"] == 1
  step, params = final_params(point)
  assert step == SWEEP_STEPS
  assert_params_close(params, before)
  np.testing.assert_allclose(rerun[2]["metrics"]["accuracy"], records[2]["metrics"]["accuracy"], atol=METRIC_ATOL)
  with open(os.path.join(workdir, "results.csv")) as f:
    assert len(list(csv.DictReader(f))) == 4


def test_sweep_definitions_in_the_repo_load(tmp_path):
  base = tiny_config()
  for name, size in (("lr.py", 4), ("seeds.py", 5), ("seeds16.py", 16)):
    points = sweep.plan(base, os.path.join(REPO, "experiments", "sweeps", name), str(tmp_path), num_devices=1)
    assert len(points) == size
    assert len(sweep.groups(points, vmap_members=16)) == 1  # Each trains as one vmapped program.


def test_part_flag_is_checked():
  assert sweep.parse_part("1/3") == (1, 3)
  for bad in ("3/3", "1", "a/b", "-1/2"):
    with pytest.raises(errors.ConfigError, match="must be I/N"):
      sweep.parse_part(bad)


def test_a_point_being_trained_by_another_process_stops_the_sweep_before_any_work(tmp_path):
  path = write_sweep(tmp_path, FOUR_POINTS)
  workdir = tmp_path / "runs"
  busy = str(workdir / sweep.point_name({"learning_rate": 3e-3, "seed": 1}))
  with held_by_another_process(busy) as pid:
    with pytest.raises(errors.ConfigError, match=f"is being trained by process {pid}"):
      sweep.run_sweep(sweep_config(), path, str(workdir), vmap_members=2)
  assert not any(checkpoints.CHECKPOINT_SUBDIR in f or "config.json" in f for f in folder_contents(str(workdir)))


def test_a_point_that_learned_nothing_is_marked_chance_not_ok(tmp_path):
  """lr=1e3 ends at loss 2e10 and accuracy 0.10 without a NaN: finished, but no result."""
  config = sweep._config_dict(tiny_config())  # pylint: disable=protected-access
  def record(name, accuracy, loss, error=None):
    return {"name": name, "overrides": {"learning_rate": float(name)}, "error": error, "train_time_s": 1.0,
            "compile_time_s": 0.5, "trained_with": 1, "config": config,
            "metrics": {"accuracy": accuracy, "loss": loss, "precision": accuracy, "recall": accuracy}}
  records = [record("0.001", 0.81, 0.5), record("1000.0", 0.1, 2e10), record("1e9", float("nan"), float("nan"), "NaN")]
  assert [sweep.status(r) for r in records] == ["ok", "chance", "diverged"]
  sweep.write_results(str(tmp_path), records)
  with open(tmp_path / "results.csv") as f:
    assert [row["status"] for row in csv.DictReader(f)] == ["ok", "chance", "diverged"]
  assert "1000.0: final accuracy 0.1000 is no better than chance" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("point, message", [
    ({"model": {"name": "resnet"}}, "model is a whole section; set its fields with dotted keys"),
    ({"data.data_dir": b"bytes"}, "is not a JSON value"),
    ({"model.name": "resnet", "model.conv_features": (8,)},
     "config.model.conv_features is not a field of model.name='resnet' (a field of model.name='cnn')"),
])
def test_points_that_could_not_be_saved_or_named_are_refused_before_training(tmp_path, point, message):
  path = write_sweep(tmp_path, f"def get_sweep():\n  return [{{}}, {point!r}]\n")
  with pytest.raises(errors.ConfigError) as e:
    sweep.plan(tiny_config(), path, str(tmp_path / "runs"), num_devices=1)
  assert message in str(e.value) and "point 1" in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "runs").exists()


def test_a_point_replacing_the_model_section_with_a_configdict_is_refused(tmp_path):
  path = write_sweep(tmp_path, "from fmnist_jax import model_families\n"
                               "def get_sweep():\n  return [{'model': model_families.resnet_config()}]\n")
  with pytest.raises(errors.ConfigError, match="model is a whole section"):
    sweep.plan(tiny_config(), path, str(tmp_path / "runs"), num_devices=1)


def test_a_sweep_may_switch_and_mix_model_families(tmp_path):
  path = write_sweep(tmp_path, "def get_sweep():\n  return [{'seed': 1}, {'model.name': 'resnet', "
                               "'model.stage_features': (4, 8), 'model.blocks_per_stage': (1, 1), "
                               "'model.stage_strides': (1, 2)}, {'model.name': 'cnn', 'seed': 2}]\n")
  points = sweep.plan(tiny_config(), path, str(tmp_path / "runs"), num_devices=1)
  cnn, resnet, cnn_again = (p.config.model for p in points)
  assert cnn.name == cnn_again.name == "cnn" and cnn.conv_features == (8, 16)  # tiny_config's own CNN.
  assert resnet.name == "resnet" and resnet.stage_features == (4, 8) and resnet.stem_features == 16
  assert "conv_features" not in resnet
  assert [[p.name for p in g] for g in sweep.groups(points, vmap_members=4)] == [
      [points[0].name, points[2].name], [points[1].name]]
