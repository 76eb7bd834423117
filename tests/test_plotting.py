"""scripts/plot.py and fmnist_jax.plotting on a real tiny run, a sweep folder and legacy event files."""

import json
import os
import shutil

from PIL import Image
import pytest

from fmnist_jax import errors
from fmnist_jax import plotting
from tests.conftest import run_module

# Runs scripts/plot.py with TensorFlow made unimportable: plotting must not need it.
_WITHOUT_TF = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = ['plot.py'] + sys.argv[1:]; "
               "runpy.run_path('scripts/plot.py', run_name='__main__')")


def test_plot_script_writes_wide_pngs_without_tensorflow(tiny_run, tmp_path):
  workdir, _ = tiny_run
  result = run_module(["-c", _WITHOUT_TF, f"--workdir={workdir}", f"--out={tmp_path}"])
  assert result.returncode == 0, result.stderr[-3000:]
  for metric in plotting.CURVE_METRICS:
    with Image.open(tmp_path / f"{metric}.png") as image:
      assert image.width >= 800, (metric, image.size)


def test_curves_hold_what_training_logged(tiny_run):
  workdir, final = tiny_run
  (run,) = plotting.load_runs(workdir)
  assert run.steps_per_epoch == 60_000 // 100  # tiny_config's batch size.
  for split in plotting.SPLITS:
    assert list(run.scalars[split]["loss"].steps) == [10, 20, 30]
  assert run.scalars["eval"]["accuracy"].values[-1] == pytest.approx(final["accuracy"], abs=1e-6)
  assert run.scalars["eval"]["loss"].values[-1] == pytest.approx(final["loss"], rel=1e-6)
  fig = plotting.curve_figure([run], "loss")
  ax = fig.axes[0]
  assert [line.get_label() for line in ax.get_lines()] == ["train", "eval"]
  assert ax.get_xlabel() == "step"
  assert [a.get_xlabel() for a in ax.child_axes] == ["epoch"]  # The secondary axis.


def test_sweep_folder_is_overlaid(tiny_run, tmp_path):
  workdir, _ = tiny_run
  for name in ("seed_0", "seed_1"):
    shutil.copytree(workdir, tmp_path / "sweep" / name, ignore=shutil.ignore_patterns("checkpoints"))
  runs = plotting.load_runs(str(tmp_path / "sweep"))
  assert [r.name for r in runs] == ["seed_0", "seed_1"]
  labels = [line.get_label() for line in plotting.curve_figure(runs, "accuracy").axes[0].get_lines()]
  assert labels == ["seed_0 train", "seed_0 eval", "seed_1 train", "seed_1 eval"]
  paths = plotting.write_curves(runs, str(tmp_path / "out"))
  assert sorted(os.path.basename(p) for p in paths) == ["accuracy.png", "loss.png", "precision.png"]


def write_scalars(logdir, tag, points):
  """Legacy simple_value scalars, as TF1 wrote them: [(step, value)], wall time = step."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.summary.writer import event_file_writer
  writer = event_file_writer.EventFileWriter(str(logdir))
  for step, value in points:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
    writer.add_event(event_pb2.Event(wall_time=step, step=step, summary=summary))
  writer.close()


def test_legacy_simple_value_scalars_are_read_and_newest_write_wins(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"batch_size": 250}))
  write_scalars(tmp_path / "train", "loss", [(1, 2.0), (2, 1.5), (3, 1.0)])
  write_scalars(tmp_path / "train", "loss", [(2, 1.25), (3, 0.75)])  # Written later: a resumed run's steps.
  (run,) = plotting.load_runs(str(tmp_path))
  series = run.scalars["train"]["loss"]
  assert list(series.steps) == [1, 2, 3]
  assert list(series.values) == pytest.approx([2.0, 1.25, 0.75])
  assert run.steps_per_epoch == 240


def test_sweep_final_table_has_each_runs_last_values_and_their_mean_and_sample_std(tmp_path):
  finals = {"seed=0": (0.90, 0.28, 0.93), "seed=1": (0.91, 0.26, 0.92), "seed=2": (0.89, 0.30, 0.94)}
  for name, (acc, loss, train_acc) in finals.items():
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"batch_size": 250}))
    write_scalars(run / "eval", "accuracy", [(40, 0.5), (80, acc)])
    write_scalars(run / "eval", "loss", [(40, 1.0), (80, loss)])
    write_scalars(run / "train", "accuracy", [(50, 0.6), (80, train_acc)])
    if name != "seed=2":
      write_scalars(run / "eval", "precision", [(80, acc)])  # Not every run has it: the column is dropped.
  rows = plotting.final_table(plotting.load_runs(str(tmp_path)))
  assert [row["run"] for row in rows] == ["seed=0", "seed=1", "seed=2", "mean", "std"]
  assert "eval precision" not in rows[0]
  accs = [acc for acc, _, _ in finals.values()]
  assert [row["eval accuracy"] for row in rows[:3]] == pytest.approx(accs, rel=1e-6)
  assert rows[3]["eval accuracy"] == pytest.approx(sum(accs) / 3, rel=1e-6)
  sample_std = (sum((a - sum(accs) / 3) ** 2 for a in accs) / 2) ** 0.5
  assert rows[4]["eval accuracy"] == pytest.approx(sample_std, rel=1e-5)  # Event files hold float32.
  assert rows[3]["train accuracy"] == pytest.approx(0.93, rel=1e-6)
  assert rows[0]["step"] == 80
  path = plotting.write_final_table(rows, str(tmp_path / "final.csv"))
  with open(path) as f:
    assert f.readline().strip() == "run,train accuracy,eval loss,eval accuracy,step"
  assert plotting.format_final_table(rows).splitlines()[-1] == "| std | 0.0100 | 0.0200 | 0.0100 | 0 |"


def test_empty_workdir_fails_in_one_line(tmp_path):
  result = run_module(["scripts/plot.py", f"--workdir={tmp_path}"])
  assert result.returncode == errors.EXIT_USER_ERROR
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: no run in {tmp_path}")
  assert not (tmp_path / "plots").exists()


def test_run_without_event_files_is_a_user_error(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"batch_size": 250}))
  (tmp_path / "eval").mkdir()
  with pytest.raises(errors.UserError, match="no scalar summaries"):
    plotting.load_runs(str(tmp_path))


def test_sweep_of_different_models_has_a_mean_and_std_per_model_over_its_seeds_only(tmp_path):
  finals = {("32", 0): 0.80, ("32", 1): 0.82, ("64", 0): 0.90, ("64", 1): 0.94, ("128", 0): 0.95}
  for (width, seed), acc in finals.items():
    run = tmp_path / f"width={width},seed={seed}"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"seed": seed, "model": {"dense_features": int(width)}}))
    write_scalars(run / "eval", "accuracy", [(80, acc)])
  rows = {row["run"]: row for row in plotting.final_table(plotting.load_runs(str(tmp_path)))}
  assert [name for name in rows if "mean" in name or "std" in name] == [
      "mean (model.dense_features=32)", "std (model.dense_features=32)",
      "mean (model.dense_features=64)", "std (model.dense_features=64)"]  # 128 has one seed: no summary.
  assert rows["mean (model.dense_features=32)"]["eval accuracy"] == pytest.approx(0.81, rel=1e-6)
  assert rows["std (model.dense_features=64)"]["eval accuracy"] == pytest.approx(0.02 * 2 ** 0.5, rel=1e-5)
