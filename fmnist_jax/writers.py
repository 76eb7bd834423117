"""TensorBoard metric writers: CLU's when TensorFlow is loaded (TFDS data), else a thin TF-free adapter.

Both write the same TF2-style scalar summaries and hparams into `<logdir>/events.out.tfevents.*`,
so TensorBoard (and scripts/plot.py) read runs from either kind of host alike.
"""

import sys
import time
import types
from typing import Any, Mapping

from absl import logging

from fmnist_jax import run_folder
from fmnist_jax import tf_compat

_NOTF = "tensorboard.compat.notf"  # Present in sys.modules, tensorboard uses its TF-free stub.


class EventFileWriter:
  """The subset of clu.metric_writers.MetricWriter we use, over tensorboard's own event writer."""

  def __init__(self, logdir: str):
    if sys.modules.get("tensorflow") is None:  # tensorboard's file I/O would import an installed TF: use its stub.
      sys.modules.setdefault(_NOTF, types.ModuleType(_NOTF))
    from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
    self._writer = event_file_writer.EventFileWriter(logdir)

  def _add(self, step: int, summary) -> None:
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    from tensorboard.plugins.scalar import summary_v2  # pylint: disable=g-import-not-at-top
    for tag, value in scalars.items():
      self._add(step, summary_v2.scalar_pb(tag, float(value)))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=g-import-not-at-top
    self._add(0, summary_v2.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class NullWriter:
  """For processes other than 0 in a multi-host run: only process 0 writes summaries."""

  def write_scalars(self, step, scalars):
    del step, scalars

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    pass

  def close(self):
    pass


def create_writer(logdir: str, *, enabled: bool = True):
  """A writer for `logdir`; `enabled=False` for processes that must not write."""
  if not enabled:
    return NullWriter()
  # CLU's asynchronous writer once TFDS has loaded TensorFlow (it then costs no import), unless this
  # process already gave tensorboard its TF-free stub, which tensorboard's summaries would then use.
  if sys.modules.get("tensorflow") is not None and _NOTF not in sys.modules:
    tf_compat.import_tensorflow()
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  # Imports TF.
    return metric_writers.AsyncWriter(metric_writers.SummaryWriter(logdir))
  logging.debug("Writing %s with the TF-free event writer (TensorFlow not loaded)", logdir)
  return EventFileWriter(logdir)


def flatten_hparams(config) -> dict:
  """Config → {dotted.name: scalar} as the hparams plugin wants (sequences become strings)."""
  return {name: value if isinstance(value, (bool, int, float, str)) else str(value)
          for name, value in run_folder.flat(config)}
