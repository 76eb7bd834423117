"""clu.metrics collections for training and evaluation.

Precision and recall are macro averages over classes computed from a confusion matrix whose
counts are summed over every batch (never an average of per-batch ratios). A class that is never
predicted (never present) counts as precision (recall) 0, as scikit-learn's default does.
"""

from typing import Optional

from clu import metrics
import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class ConfusionMatrix(metrics.Metric):
  """Counts [true class, predicted class], summed over batches; `mask` drops padding rows."""

  counts: jnp.ndarray

  @classmethod
  def from_model_output(cls, *, logits: jnp.ndarray, labels: jnp.ndarray,
                        mask: Optional[jnp.ndarray] = None, **_) -> "ConfusionMatrix":
    num_classes = logits.shape[-1]
    weight = jnp.ones(labels.shape, jnp.int32) if mask is None else mask.astype(jnp.int32)
    flat = labels.astype(jnp.int32) * num_classes + jnp.argmax(logits, -1)
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[flat].add(weight)
    return cls(counts=counts.reshape(num_classes, num_classes))

  def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
    return type(self)(counts=self.counts + other.counts)

  def compute(self) -> jnp.ndarray:
    return self.counts


def _safe_ratio(num: jnp.ndarray, den: jnp.ndarray) -> jnp.ndarray:
  return jnp.where(den > 0, num / jnp.maximum(den, 1), 0.0)


def per_class_precision(counts: jnp.ndarray) -> jnp.ndarray:
  return _safe_ratio(jnp.diag(counts), counts.sum(0))


def per_class_recall(counts: jnp.ndarray) -> jnp.ndarray:
  return _safe_ratio(jnp.diag(counts), counts.sum(1))


@flax.struct.dataclass
class Precision(ConfusionMatrix):
  """Macro precision over classes."""

  def compute(self) -> jnp.ndarray:
    return per_class_precision(self.counts).mean()


@flax.struct.dataclass
class Recall(ConfusionMatrix):
  """Macro recall over classes."""

  def compute(self) -> jnp.ndarray:
    return per_class_recall(self.counts).mean()


@flax.struct.dataclass
class AllFinite(metrics.Metric):
  """Whether every loss and gradient norm seen was finite: the NaN guard's signal, kept on the device.

  Gradients count too: an overflowing update can poison the parameters while the loss still looks fine.
  """

  value: jnp.ndarray

  @classmethod
  def from_model_output(cls, *, loss: jnp.ndarray, grad_norm: Optional[jnp.ndarray] = None,
                        **_) -> "AllFinite":
    finite = jnp.all(jnp.isfinite(loss))
    if grad_norm is not None:
      finite = jnp.logical_and(finite, jnp.isfinite(grad_norm))
    return cls(value=finite)

  def merge(self, other: "AllFinite") -> "AllFinite":
    return type(self)(value=jnp.logical_and(self.value, other.value))

  def compute(self) -> jnp.ndarray:
    return self.value


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  grad_norm: metrics.Average.from_output("grad_norm")  # Global L2 norm of the gradients, averaged over steps.
  accuracy: metrics.Accuracy
  precision: Precision
  recall: Recall
  all_finite: AllFinite


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Accuracy
  precision: Precision
  recall: Recall


def scalars(collection: metrics.Collection) -> dict:
  """Host floats of a collection's computed values, without the NaN-guard flag."""
  values = jax.device_get(collection.compute())
  return {k: float(v) for k, v in values.items() if k != "all_finite"}
