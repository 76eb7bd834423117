"""fmnist_jax.evaluate: per-class numbers against an independent numpy confusion matrix, files, errors."""

import csv
import glob
import os
import re
import shutil

import jax
import numpy as np
from PIL import Image
import pytest

import fmnist_jax
from fmnist_jax import checkpoints
from fmnist_jax import errors
from fmnist_jax import evaluate
from fmnist_jax import input_pipeline
from fmnist_jax import models
from fmnist_jax import run_folder
from tests.conftest import REPO, run_module


def _independent_logits(workdir, images):
  """The restored model's logits, computed here without any evaluate code."""
  config = run_folder.load_config(workdir)
  model = models.create_model(config)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32))["params"]
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  _, params = ckpt.restore_params(abstract)
  ckpt.close()
  apply = jax.jit(model.apply)
  return np.concatenate([np.asarray(apply({"params": params}, images[i:i + 1000].astype(np.float32) / 255))
                         for i in range(0, len(images), 1000)])


def test_per_class_report_agrees_with_numpy_confusion_matrix(tiny_run, tmp_path):
  workdir, final = tiny_run
  evaluation = evaluate.evaluate_workdir(workdir)
  labels = evaluation.test.labels
  assert evaluation.step == 30 and len(labels) == 10_000
  logits = _independent_logits(workdir, evaluation.test.images)
  predicted = evaluation.probabilities.argmax(1)
  top2 = np.sort(logits, 1)[:, -2:]
  decided = top2[:, 1] - top2[:, 0] > 1e-4  # Float rounding may only flip near-ties.
  assert np.array_equal(predicted[decided], logits.argmax(1)[decided])

  confusion = np.zeros((10, 10), np.int64)
  np.add.at(confusion, (labels, predicted), 1)
  np.testing.assert_array_equal(evaluation.confusion, confusion)
  tp = np.diag(confusion).astype(float)
  precision = np.divide(tp, confusion.sum(0), out=np.zeros(10), where=confusion.sum(0) > 0)
  recall = tp / confusion.sum(1)
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(10), where=precision + recall > 0)

  evaluate.write_report(evaluation, str(tmp_path), num_mistakes=12)
  with open(tmp_path / "per_class.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["class_name"] for r in rows] == list(fmnist_jax.CLASS_NAMES)
  for name, expected in (("precision", precision), ("recall", recall), ("f1", f1)):
    np.testing.assert_allclose([float(r[name]) for r in rows], expected, atol=5e-5, err_msg=name)
  assert [int(r["support"]) for r in rows] == list(np.bincount(labels, minlength=10))
  # The overall numbers are steps.eval_step's, as training logged them.
  assert evaluation.metrics["accuracy"] == pytest.approx(tp.sum() / len(labels), abs=1e-6)
  assert evaluation.metrics["accuracy"] == pytest.approx(final["accuracy"], abs=1e-6)
  assert evaluation.metrics["loss"] == pytest.approx(final["loss"], rel=1e-5)
  for name in ("confusion_matrix.png", "misclassified.png"):
    with Image.open(tmp_path / name) as image:
      assert image.width >= 800, (name, image.size)


def test_most_confident_mistakes_ranks_wrong_predictions_by_confidence():
  probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
  labels = np.array([0, 0, 1, 1, 1])
  assert list(evaluate.most_confident_mistakes(probabilities, labels, 5)) == [4, 1, 2]
  assert list(evaluate.most_confident_mistakes(probabilities, labels, 2)) == [4, 1]


def test_per_class_table_counts_never_predicted_class_as_zero():
  confusion = np.array([[3, 1, 0], [0, 2, 0], [1, 1, 0]])
  rows = evaluate.per_class_table(np.pad(confusion, ((0, 7), (0, 7))))
  assert rows[0]["precision"] == pytest.approx(0.75) and rows[0]["recall"] == pytest.approx(0.75)
  assert rows[1]["precision"] == pytest.approx(0.5) and rows[1]["f1"] == pytest.approx(2 * 0.5 / 1.5)
  assert rows[2]["precision"] == rows[2]["recall"] == rows[2]["f1"] == 0.0
  assert rows[2]["support"] == 2


def test_cli_on_a_folder_without_a_run_fails_in_one_line(tmp_path):
  result = run_module(["-m", "fmnist_jax.evaluate", f"--workdir={tmp_path}"])
  assert result.returncode == errors.EXIT_USER_ERROR
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path}/config.json not found; --workdir must be a folder written by training")


def test_workdir_without_checkpoints_is_a_user_error(tiny_run, tmp_path):
  workdir, _ = tiny_run
  shutil.copy(os.path.join(workdir, "config.json"), tmp_path)
  with pytest.raises(errors.CheckpointError, match="no checkpoint in"):
    evaluate.evaluate_workdir(str(tmp_path))


@pytest.mark.slow
def test_shipped_model_scores_the_readme_accuracy_exactly(monkeypatch, fmnist):
  with open(os.path.join(REPO, "README.md")) as f:
    stated = re.search(r"test accuracy is (\d+\.\d\d)%", f.read())
  assert stated, "README.md must state the shipped model's accuracy as 'test accuracy is NN.NN%'"
  monkeypatch.setattr(input_pipeline, "load_dataset", lambda data_config: fmnist)  # Data from the fixtures' folder.
  evaluation = evaluate.evaluate_workdir(os.path.join(REPO, "pretrained"))
  correct = int(np.trace(evaluation.confusion))
  assert len(evaluation.test.labels) == 10_000
  assert correct == round(float(stated.group(1)) * 100), (
      f"pretrained/ classifies {correct} of 10,000 test images correctly; README.md states {stated.group(1)}%")


@pytest.mark.slow
def test_cli_usage_mistakes_are_one_line_before_any_work(tmp_path):
  existing_file = tmp_path / "report.txt"
  existing_file.write_text("")
  for args, expected in (([], "--workdir"), ([f"--workdir={tmp_path}", "extra"], "unexpected arguments extra"),
                         ([f"--workdir={tmp_path}", f"--out={existing_file}"], f"--out={existing_file}")):
    result = run_module(["-m", "fmnist_jax.evaluate", *args])
    assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-2000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert expected in line and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert run_module(["-m", "fmnist_jax.evaluate", "--help"]).returncode == 0


def test_an_out_folder_that_cannot_be_created_is_one_line_before_the_evaluation(tiny_run, tmp_path):
  workdir, _ = tiny_run
  result = run_module(["-m", "fmnist_jax.evaluate", f"--workdir={workdir}", "--out=/proc/no/such/folder"])
  assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-2000:]
  [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert "--out=/proc/no/such/folder: cannot create it" in line and "Traceback" not in result.stderr


def test_evaluate_prints_no_library_chatter(tiny_run, tmp_path):
  workdir, _ = tiny_run
  result = run_module(["-m", "fmnist_jax.evaluate", f"--workdir={workdir}", f"--out={tmp_path / 'out'}"])
  assert result.returncode == 0, result.stderr[-2000:]
  ours = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, "fmnist_jax", "*.py"))}
  logged_by = [m.group(1) for m in re.finditer(r"^[IWE]\d{4} [\d:.]+ +\d+ (\S+?):\d+\]", result.stderr, re.M)]
  assert logged_by and set(logged_by) <= ours, result.stderr  # Orbax logged ~30 INFO lines.
