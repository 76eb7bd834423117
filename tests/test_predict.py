"""Prediction: the shipped model and test images, any trained workdir, the CLI's formats and failures."""

import glob
import json
import os
import re
import shutil

import numpy as np
from PIL import Image
import pytest

from fmnist_jax import CLASS_NAMES
from fmnist_jax import errors
from fmnist_jax import images
from fmnist_jax import predict
from fmnist_jax import train
from tests.conftest import REPO, run_module, tiny_config
from tests.test_images import product_photo
from tests.test_images import renderings

PRETRAINED = os.path.join(REPO, "pretrained")
TEST_IMGS = [os.path.join(REPO, "test_imgs", f"{n}.png") for n in range(10)]


@pytest.fixture(scope="module")
def shipped():
  return predict.Predictor(PRETRAINED)


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
  """A workdir trained with non-default widths, kept without its optimizer state: (workdir, final metrics)."""
  workdir = str(tmp_path_factory.mktemp("narrow"))
  config = tiny_config(**{"model.conv_features": (4, 8), "model.kernel_size": (3, 3),
                          "model.dense_features": 16, "num_train_steps": 10})
  final = train.train_and_evaluate(config, workdir)
  for item in glob.glob(os.path.join(workdir, "checkpoints", "*", "train")):
    shutil.rmtree(item)
  return workdir, final


def test_test_imgs_are_test_split_images_of_their_class(fmnist):
  test = fmnist["test"]
  for n, path in enumerate(TEST_IMGS):
    with Image.open(path) as im:
      assert im.mode == "L" and im.size == (28, 28), path
      x = np.asarray(im)
    matches = np.all(test.images[..., 0] == x, axis=(1, 2))
    assert matches.any() and set(test.labels[matches]) == {n}, path


def test_shipped_model_classifies_test_imgs_also_as_photos_and_cutouts(shipped):
  for n, path in enumerate(TEST_IMGS):
    with Image.open(path) as im:
      x = np.asarray(im)
    variants = {"file": path, **renderings(x), "product_photo": product_photo(x)}
    probabilities = shipped.probabilities(np.stack([images.load_image(v) for v in variants.values()]))
    predicted = dict(zip(variants, (CLASS_NAMES[i] for i in probabilities.argmax(1))))
    assert set(predicted.values()) == {CLASS_NAMES[n]}, (path, predicted)


@pytest.mark.slow
def test_predictor_scores_the_readme_accuracy_of_the_shipped_model(shipped, fmnist):
  """Predictor's own path (not evaluate's) over the whole test split gives the README's number."""
  with open(os.path.join(REPO, "README.md")) as f:
    stated = re.search(r"test accuracy is (\d+\.\d\d)%", f.read())
  assert stated, "README.md must state the shipped model's accuracy as 'test accuracy is NN.NN%'"
  test = fmnist["test"]
  probabilities = shipped.probabilities(test.images.astype(np.float32) / 255.0)
  correct = int(np.sum(probabilities.argmax(1) == test.labels))
  assert len(test.labels) == 10_000
  assert correct == round(float(stated.group(1)) * 100), (
      f"Predictor classifies {correct} of 10,000 test images correctly; README.md states {stated.group(1)}%")


@pytest.mark.slow
def test_a_workdir_predicts_with_its_own_config_and_no_optimizer_state(narrow, fmnist):
  workdir, final = narrow
  predictor = predict.Predictor(workdir)
  assert predictor.params["Dense_0"]["kernel"].shape[1] == 16
  test = fmnist["test"]
  probabilities = predictor.probabilities(test.images.astype(np.float32) / 255.0)
  np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
  assert np.mean(probabilities.argmax(1) == test.labels) == pytest.approx(final["accuracy"], abs=1e-6)


def test_batches_compile_once_per_bucket_and_padding_does_not_leak(narrow, fmnist):
  predictor = predict.Predictor(narrow[0])
  x = fmnist["test"].images[:2500].astype(np.float32) / 255.0
  compiled = lambda: predictor._probabilities._cache_size()  # pylint: disable=protected-access
  three, four = predictor.probabilities(x[:3]), predictor.probabilities(x[:4])
  assert compiled() == 1  # Both padded to 4.
  np.testing.assert_allclose(three, four[:3], atol=1e-6)
  one = predictor.probabilities(x[3:4])
  np.testing.assert_allclose(one[0], four[3], atol=1e-6)
  everything = predictor.probabilities(x)  # Chunks of eval_batch_size=1000: 1000, 1000, 500 → 512.
  assert compiled() == 4 and everything.shape == (2500, 10)
  np.testing.assert_allclose(everything[:4], four, atol=1e-6)


def test_bad_workdirs_raise_checkpoint_errors(narrow, tmp_path):
  with pytest.raises(errors.CheckpointError, match="is not a folder"):
    predict.Predictor(str(tmp_path / "missing"))
  with pytest.raises(errors.CheckpointError, match="config.json not found"):
    predict.Predictor(str(tmp_path))
  other = tmp_path / "other_widths"
  shutil.copytree(narrow[0], other)
  config = json.loads((other / "config.json").read_text())
  config["model"]["dense_features"] = 32
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(errors.CheckpointError, match=r"'Dense_0'\]\['bias'\] is stored as \(16,\)"):
    predict.Predictor(str(other))
  shutil.rmtree(other / "checkpoints")
  with pytest.raises(errors.CheckpointError, match="no checkpoint in"):
    predict.Predictor(str(other))


def snapshot(folder: str) -> dict:
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, dirs, files in os.walk(folder) for name in dirs + files}


def test_cli_prints_the_original_line_without_importing_tensorflow():
  shipped_files = snapshot(PRETRAINED)
  result = run_module(["-X", "importtime", "scripts/predict.py", "test_imgs/2.png"])
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout == "Predicted class: Pullover\n"
  assert snapshot(PRETRAINED) == shipped_files  # Prediction writes nothing into the shipped model.
  imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
              if line.startswith("import time:")}
  assert "jax" in imported and "orbax.checkpoint" in imported
  assert not [m for m in imported if m.split(".")[0] == "tensorflow"]


def test_cli_several_images_top_k_and_a_bad_file(tmp_path):
  bad = tmp_path / "notes.png"
  bad.write_text("not an image")
  result = run_module(["scripts/predict.py", "test_imgs/0.png", str(bad), "test_imgs/1.png", "--top_k=3"])
  assert result.returncode == errors.EXIT_USER_ERROR
  assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
      f"error: {bad}: not an image Pillow can read; pass a PNG or JPEG image"]
  assert "Traceback" not in result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 2
  for line, path, name in zip(lines, ("test_imgs/0.png", "test_imgs/1.png"), CLASS_NAMES):
    probability = r"([01]\.\d{3})"
    match = re.fullmatch(rf"{path}: Predicted class: (.+) \((.+) {probability}, (.+) {probability}, "
                         rf"(.+) {probability}\)", line)
    assert match, line
    assert match[1] == match[2] == name
    assert float(match[3]) >= float(match[5]) >= float(match[7])


def test_cli_json_has_probabilities_and_error_objects_in_input_order(tmp_path):
  missing = str(tmp_path / "missing.png")
  result = run_module(["scripts/predict.py", "--json", "test_imgs/3.png", missing, "test_imgs/4.png"])
  assert result.returncode == errors.EXIT_USER_ERROR and "Traceback" not in result.stderr
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert [r["path"] for r in records] == ["test_imgs/3.png", missing, "test_imgs/4.png"]
  assert records[1] == {"path": missing, "error": f"{missing}: no such file; check the path"}
  for record, n in ((records[0], 3), (records[2], 4)):
    assert record["predicted_class"] == CLASS_NAMES[n] and record["class_index"] == n
    probabilities = list(record["probabilities"].items())
    assert sorted(record["probabilities"]) == sorted(CLASS_NAMES) and probabilities[0][0] == CLASS_NAMES[n]
    assert [p for _, p in probabilities] == sorted((p for _, p in probabilities), reverse=True)
    assert sum(p for _, p in probabilities) == pytest.approx(1.0, abs=1e-5)


def test_cli_corrupted_checkpoint_is_one_line_without_traceback(narrow, tmp_path):
  corrupted = tmp_path / "corrupted"
  shutil.copytree(narrow[0], corrupted)
  data = max(glob.glob(str(corrupted / "checkpoints" / "*" / "params" / "**" / "d" / "*"), recursive=True),
             key=os.path.getsize)
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)
  result = run_module(["scripts/predict.py", f"--workdir={corrupted}", "test_imgs/0.png"])
  assert result.returncode == errors.EXIT_USER_ERROR and result.stdout == ""
  errors_printed = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors_printed) == 1 and "Traceback" not in result.stderr and "Exception" not in result.stderr
  assert errors_printed[0].startswith(f"error: no checkpoint in {corrupted / 'checkpoints'} restores")


@pytest.mark.parametrize("args, expected", [
    ([], "no image given"),
    (["--top_k=0", "test_imgs/0.png"], "--top_k=0"),
    (["--top_k=-1", "test_imgs/0.png"], "--top_k=-1"),
    (["--top_k=11", "test_imgs/0.png"], "--top_k=11"),  # There are 10 classes: it showed 10 without a word.
])
def test_cli_usage_mistakes_are_one_line_exit_2(args, expected):
  result = run_module(["-m", "fmnist_jax.predict", *args])
  assert result.returncode == errors.EXIT_USER_ERROR, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith("error: ") and expected in result.stderr
  assert "Traceback" not in result.stderr and "USAGE" not in result.stderr + result.stdout


def test_cli_help_exits_0():
  result = run_module(["-m", "fmnist_jax.predict", "--help"])
  assert result.returncode == 0 and "--top_k" in result.stdout


def test_cli_on_a_damaged_newest_step_warns_naming_the_step_it_used(narrow, tmp_path):
  workdir = tmp_path / "damaged"
  shutil.copytree(narrow[0], workdir)
  shutil.copytree(workdir / "checkpoints" / "10", workdir / "checkpoints" / "20")  # A newer step ...
  os.remove(workdir / "checkpoints" / "20" / "params" / "_METADATA")  # ... that cannot be restored.
  result = run_module(["scripts/predict.py", f"--workdir={workdir}", "test_imgs/0.png"])
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("Predicted class: ")
  [line] = result.stderr.strip().splitlines()
  assert line.startswith(f"warning: {workdir}: step 20: ") and line.endswith("predicting with the newest step "
                                                                             "that restores, step 10")
