"""Precision/recall from summed confusion counts, checked against a hand-computed matrix."""

import jax.numpy as jnp
import numpy as np

from fmnist_jax import metrics


def _logits(preds, num_classes=3):
  return jnp.eye(num_classes)[jnp.array(preds)]


def test_precision_recall_against_hand_computed_confusion_matrix():
  labels = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]
  preds = [0, 0, 1, 1, 2, 2, 2, 0, 2, 1]
  # Rows true, columns predicted:  [[2,1,0],[0,2,1],[1,0,3]]
  # Column sums 3, 3, 4 and row sums 3, 3, 4: precision and recall are both mean(2/3, 2/3, 3/4).
  m = metrics.EvalMetrics.single_from_model_output(
      logits=_logits(preds), labels=jnp.array(labels), loss=jnp.zeros(10), mask=jnp.ones(10, bool))
  confusion = np.array([[2, 1, 0], [0, 2, 1], [1, 0, 3]])
  np.testing.assert_array_equal(m.precision.counts, confusion)
  values = m.compute()
  np.testing.assert_allclose(values["precision"], np.mean([2 / 3, 2 / 3, 3 / 4]), rtol=1e-6)
  np.testing.assert_allclose(values["recall"], np.mean([2 / 3, 2 / 3, 3 / 4]), rtol=1e-6)
  np.testing.assert_allclose(values["accuracy"], 7 / 10, rtol=1e-6)


def test_asymmetric_precision_and_recall_and_unpredicted_class_counts_zero():
  labels = [0, 1, 2, 2]
  preds = [0, 1, 1, 1]  # Class 2 never predicted: precision 0 for it.
  m = metrics.EvalMetrics.single_from_model_output(
      logits=_logits(preds), labels=jnp.array(labels), loss=jnp.zeros(4), mask=jnp.ones(4, bool))
  values = m.compute()
  np.testing.assert_allclose(values["precision"], (1 + 1 / 3 + 0) / 3, rtol=1e-6)
  np.testing.assert_allclose(values["recall"], (1 + 1 + 0) / 3, rtol=1e-6)


def test_counts_are_summed_across_batches_not_ratios_averaged():
  def batch(labels, preds):
    n = len(labels)
    return metrics.EvalMetrics.single_from_model_output(
        logits=_logits(preds), labels=jnp.array(labels), loss=jnp.zeros(n), mask=jnp.ones(n, bool))

  a = batch([0, 0, 0, 0], [0, 0, 0, 1])  # class 1 precision 0 here
  b = batch([1], [1])  # class 1 precision 1 here
  merged = a.merge(b).compute()
  whole = batch([0, 0, 0, 0, 1], [0, 0, 0, 1, 1]).compute()
  for key in ("precision", "recall", "accuracy"):
    np.testing.assert_allclose(merged[key], whole[key], rtol=1e-6)
  averaged = (a.compute()["precision"] + b.compute()["precision"]) / 2
  assert not np.isclose(averaged, merged["precision"])


def test_mask_drops_padding_rows():
  m = metrics.EvalMetrics.single_from_model_output(
      logits=_logits([0, 1, 2]), labels=jnp.array([0, 1, 0]), loss=jnp.array([1.0, 1.0, 100.0]),
      mask=jnp.array([True, True, False]))
  values = m.compute()
  assert values["accuracy"] == 1.0
  np.testing.assert_allclose(values["loss"], 1.0)
  assert int(m.precision.counts.sum()) == 2
