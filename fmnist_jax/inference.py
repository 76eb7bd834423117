"""How a trained model is applied in evaluation and prediction: which variables (EMA where kept) and
which test-time augmentation views. `checkpoints.restore_for_inference` reads a workdir into them.
"""

from typing import List, NamedTuple

from fmnist_jax import augment


def inference_variables(params, batch_stats=None, ema_params=None, ema_batch_stats=None) -> dict:
  """What evaluation and prediction apply: the EMA of the parameters and of the BatchNorm statistics
  when kept, else the parameters and the statistics."""
  if ema_params is not None:
    params, batch_stats = ema_params, batch_stats if ema_batch_stats is None else ema_batch_stats
  variables = {"params": params}
  if batch_stats is not None:
    variables["batch_stats"] = batch_stats
  return variables


class TTA(NamedTuple):
  """Test-time augmentation: the views of each image whose logits evaluation and prediction average."""
  flip: bool = False  # Each view and its mirror.
  shift_pixels: int = 0  # The image and its shifts by 1, ..., this many pixels up, down, left, right (0: none).


def tta_of(config) -> TTA:
  return TTA(flip=bool(config.eval_flip_tta), shift_pixels=int(config.eval_tta_shift_pixels))


def tta_views(images, tta: TTA) -> List:
  """The views averaged: the images first, then their shifts, each followed by its mirror when flipping."""
  views = [images] + [augment.shift(images, dy, dx) for d in range(1, tta.shift_pixels + 1)
                      for dy, dx in ((-d, 0), (d, 0), (0, -d), (0, d))]
  return [v for view in views for v in ((view, view[:, :, ::-1]) if tta.flip else (view,))]


def inference_logits(apply_fn, variables, images, tta: TTA):
  """Evaluation and prediction logits (statistics used, not updated): the mean over `tta_views`."""
  views = tta_views(images, tta)
  return sum(apply_fn(variables, view, train=False) for view in views) / len(views)

