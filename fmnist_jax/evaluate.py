"""Per-class evaluation of a trained workdir on the test split.

python -m fmnist_jax.evaluate --workdir=W [--out=DIR] restores the newest parameters, runs
steps.eval_step over the whole test split (so the overall numbers are those training logged), and
writes per_class.csv (precision, recall, F1, support), confusion_matrix.png and misclassified.png
(the test images the model got wrong with the highest confidence).
"""

import csv
import dataclasses
import functools
import os
from typing import Dict, List

from absl import flags
import jax
import numpy as np

import fmnist_jax
from fmnist_jax import checkpoints
from fmnist_jax import cli
from fmnist_jax import inference
from fmnist_jax import input_pipeline
from fmnist_jax import metrics as metrics_lib
from fmnist_jax import plotting
from fmnist_jax import steps

FLAGS = flags.FLAGS
CSV_FIELDS = ("class_index", "class_name", "precision", "recall", "f1", "support")


@dataclasses.dataclass(frozen=True)
class Evaluation:
  step: int  # Training step of the restored checkpoint.
  metrics: Dict[str, float]  # steps.eval_step's metrics over the whole test split.
  confusion: np.ndarray  # int [true class, predicted class]
  probabilities: np.ndarray  # float [N, classes], softmax of the logits
  test: input_pipeline.Split


def _evaluate_batch(state, batch, tta: inference.TTA):
  """steps.eval_step's metrics plus the softmax and confusion counts (XLA shares the forward pass)."""
  batch = input_pipeline.to_float_batch(batch)
  variables = inference.inference_variables(state.params, state.batch_stats, state.ema_params, state.ema_batch_stats)
  logits = inference.inference_logits(state.apply_fn, variables, batch["image"], tta)
  confusion = metrics_lib.ConfusionMatrix.from_model_output(
      logits=logits, labels=batch["label"], mask=batch["mask"])
  return steps.eval_step(state, batch, tta=tta), confusion, jax.nn.softmax(logits)


def evaluate_workdir(workdir: str) -> Evaluation:
  """Restores `workdir`'s newest parameters (and model state) and evaluates them on the test split
  of its config.data, as evaluation during training did (its test-time augmentation included)."""
  restored = checkpoints.restore_for_inference(workdir)
  config = restored.config
  # eval_step reads the model and its state, never an optimizer.
  state = steps.TrainState(step=restored.step, apply_fn=restored.apply_fn, params=restored.params, tx=None,
                           opt_state=None, **restored.model_state)
  test = input_pipeline.load_dataset(config.data)["test"]
  batches = input_pipeline.padded_batches(test, config.eval_batch_size)
  evaluate_batch = jax.jit(functools.partial(_evaluate_batch, tta=restored.tta))
  metrics, confusion, probabilities = None, None, []
  for i in range(len(batches["label"])):
    m, c, p = evaluate_batch(state, jax.tree.map(lambda x, i=i: x[i], batches))
    metrics = m if metrics is None else metrics.merge(m)
    confusion = c if confusion is None else confusion.merge(c)
    probabilities.append(p)
  return Evaluation(step=restored.step, metrics=metrics_lib.scalars(metrics),
                    confusion=np.asarray(confusion.compute()),
                    probabilities=np.concatenate(jax.device_get(probabilities))[:len(test.labels)], test=test)


def per_class_table(confusion: np.ndarray) -> List[dict]:
  """One row per class: precision, recall, F1 (0 where precision and recall are both 0), support."""
  precision = np.asarray(metrics_lib.per_class_precision(confusion))
  recall = np.asarray(metrics_lib.per_class_recall(confusion))
  f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
  support = confusion.sum(1)
  return [{"class_index": k, "class_name": name, "precision": float(precision[k]), "recall": float(recall[k]),
           "f1": float(f1[k]), "support": int(support[k])} for k, name in enumerate(fmnist_jax.CLASS_NAMES)]


def format_table(rows: List[dict]) -> str:
  lines = [f"{'class':<12} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
  lines += [f"{r['class_name']:<12} {r['precision']:9.4f} {r['recall']:9.4f} {r['f1']:9.4f} {r['support']:8d}"
            for r in rows]
  macro = {k: np.mean([r[k] for r in rows]) for k in ("precision", "recall", "f1")}
  lines.append(f"{'macro avg':<12} {macro['precision']:9.4f} {macro['recall']:9.4f} {macro['f1']:9.4f} "
               f"{sum(r['support'] for r in rows):8d}")
  return "\n".join(lines)


def most_confident_mistakes(probabilities: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Indices of up to `k` misclassified examples, highest predicted-class probability first."""
  predicted = probabilities.argmax(1)
  wrong = np.flatnonzero(predicted != labels)
  confidence = probabilities[wrong, predicted[wrong]]
  return wrong[np.argsort(-confidence, kind="stable")[:k]]


def write_report(evaluation: Evaluation, out_dir: str, num_mistakes: int) -> List[str]:
  """per_class.csv, confusion_matrix.png and misclassified.png in `out_dir`; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  csv_path = os.path.join(out_dir, "per_class.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in per_class_table(evaluation.confusion):
      writer.writerow({**row, **{k: f"{row[k]:.4f}" for k in ("precision", "recall", "f1")}})
  names = fmnist_jax.CLASS_NAMES
  m = evaluation.metrics
  summary = f"step {evaluation.step}: accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}"
  confusion_path = plotting.save_figure(
      plotting.confusion_figure(evaluation.confusion, names, f"Test-split confusion matrix ({summary})"),
      os.path.join(out_dir, "confusion_matrix.png"))
  probabilities, labels = evaluation.probabilities, evaluation.test.labels
  idx = most_confident_mistakes(probabilities, labels, num_mistakes)
  captions = [f"true: {names[labels[i]]}\npred: {names[probabilities[i].argmax()]} "
              f"({probabilities[i].max():.2f})" for i in idx]
  mistakes_path = plotting.save_figure(
      plotting.image_grid_figure(evaluation.test.images[idx], captions,
                                 f"The {len(idx)} most confident mistakes on the test split ({summary})"),
      os.path.join(out_dir, "misclassified.png"))
  return [csv_path, confusion_path, mistakes_path]


def main(argv):
  del argv  # cli.parse_flags refused positional arguments.
  out = FLAGS.out or os.path.join(FLAGS.workdir, "evaluation")
  with cli.output_folder("--out", out):  # Created before the evaluation: a bad --out costs nothing.
    evaluation = evaluate_workdir(FLAGS.workdir)
    paths = write_report(evaluation, out, FLAGS.num_mistakes)
  m = evaluation.metrics
  print(f"{FLAGS.workdir} at step {evaluation.step}, {len(evaluation.test.labels)} test images: "
        f"accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, precision {m['precision']:.4f}, "
        f"recall {m['recall']:.4f}")
  print(format_table(per_class_table(evaluation.confusion)))
  print("wrote", *paths, sep="\n  ")


def define_flags() -> None:
  """Only as a program: importing this module must not claim flag names (fmnist_jax.main has --workdir)."""
  cli.define_workdir("A training workdir (config.json and checkpoints/).", required=True)
  flags.DEFINE_string("out", None, "Folder for the CSV and PNGs (default: <workdir>/evaluation).")
  flags.DEFINE_integer("num_mistakes", 25, "How many confidently misclassified test images to show.", lower_bound=0)


def run() -> None:
  """The `fmnist-evaluate` console script."""
  define_flags()
  cli.run_app(main, help_modules=[__name__])


if __name__ == "__main__":
  run()
