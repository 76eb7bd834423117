"""A trained model restored from a workdir, and batched class probabilities for images.

The model is built from the workdir's saved config, so any trained widths predict without flags,
and only the `params` checkpoint item is read (a shipped model may omit the optimizer state).
Batches are padded to a power of two (at most the config's eval_batch_size, larger inputs go in
chunks of it), so a process compiles once per bucket, not once per distinct batch size.
"""

import os
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import CLASS_NAMES
from fmnist_jax import checkpoints
from fmnist_jax import errors
from fmnist_jax import input_pipeline
from fmnist_jax import models
from fmnist_jax import train


class Predictor:
  """Class probabilities from the newest restorable checkpoint of a workdir."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    if not os.path.isdir(self.workdir):
      raise errors.CheckpointError(f"--workdir={workdir} is not a folder; point it at a trained run "
                                   "(or leave it out for the shipped model)")
    self.config = train.load_config(self.workdir)
    try:
      model = models.create_model(self.config)
      abstract_params = jax.eval_shape(
          lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + input_pipeline.IMAGE_SHAPE))["params"])
      self.max_batch = int(self.config.eval_batch_size)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      raise errors.CheckpointError(
          f"{os.path.join(self.workdir, train.CONFIG_FILE)} does not describe a model ({type(e).__name__}: "
          f"{e}); restore the config.json the run was trained with") from e
    ckpt = checkpoints.Checkpointer(self.workdir, read_only=True)
    try:
      self.step, self.params = ckpt.restore_params(abstract_params)
    finally:
      ckpt.close()
    self._probabilities = jax.jit(lambda params, x: jax.nn.softmax(model.apply({"params": params}, x)))

  def bucket(self, n: int) -> int:
    """The padded batch size for n images: the next power of two, capped at max_batch."""
    return min(1 << max(n - 1, 0).bit_length(), self.max_batch)

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """float32 [N, 28, 28, 1] in [0, 1] → float32 [N, 10]; one compiled call per chunk of max_batch."""
    images = np.asarray(images, np.float32)
    out = []
    for start in range(0, len(images), self.max_batch):
      chunk = images[start:start + self.max_batch]
      padded = np.zeros((self.bucket(len(chunk)),) + chunk.shape[1:], np.float32)
      padded[:len(chunk)] = chunk
      out.append(np.asarray(self._probabilities(self.params, padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(CLASS_NAMES)), np.float32)


def top_k(probabilities: np.ndarray, k: int) -> Tuple[Tuple[str, float], ...]:
  """The k most likely (class name, probability) of one image, most likely first."""
  order = np.argsort(-probabilities, kind="stable")[:k]
  return tuple((CLASS_NAMES[i], float(probabilities[i])) for i in order)
