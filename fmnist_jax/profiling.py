"""config.runtime.profile_steps: a jax.profiler trace of training steps [start, stop) for TensorBoard.

The trace goes to `<workdir>/profile` (runtime.PROFILE_SUBDIR) in the layout of TensorBoard's profile
plugin (`plugins/profile/<time>/<host>.xplane.pb`): `tensorboard --logdir=<workdir>` shows it under
PROFILE (with `pip install tensorboard-plugin-profile`). Only process 0 of a run of many processes
traces (the others run the same program). The host loop stops at `start` and `stop`
(train.next_boundary), so fused chunks begin and end there.
"""

import os
from typing import Optional, Tuple

from absl import logging
import jax

from fmnist_jax import runtime


def trace_dir(workdir: str) -> str:
  return os.path.join(workdir, runtime.PROFILE_SUBDIR)


class StepProfiler:
  """Starts a trace before step `start` and stops it after step `stop - 1` (or when training ends)."""

  def __init__(self, profile_steps: Optional[Tuple[int, int]], workdir: str, enabled: bool = True):
    self.steps = tuple(profile_steps) if profile_steps is not None and enabled else None
    self.directory = trace_dir(workdir)
    self.active = False

  def boundaries(self) -> tuple:
    """The steps at which the host loop must stop for the profiler."""
    return self.steps or ()

  def before(self, step: int) -> None:
    """Called before training from `step`: starts the trace when `step` is in [start, stop)."""
    if self.steps and not self.active and self.steps[0] <= step < self.steps[1]:
      os.makedirs(self.directory, exist_ok=True)
      jax.profiler.start_trace(self.directory)
      self.active = True
      logging.info("Profiling steps %d to %d into %s", step, self.steps[1], self.directory)

  def after(self, step: int, outputs) -> None:
    """Called once steps before `step` ran: stops the trace at `stop`, after `outputs` are computed."""
    if self.active and step >= self.steps[1]:
      self.stop(outputs)

  def stop(self, outputs=None) -> None:
    if not self.active:
      return
    if outputs is not None:
      jax.block_until_ready(outputs)
    jax.profiler.stop_trace()
    self.active = False
    logging.info("Profile written to %s (tensorboard --logdir=%s, PROFILE tab)", self.directory, self.directory)
