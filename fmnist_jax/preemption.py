"""SIGTERM/SIGINT → finish the current step, checkpoint, flush, exit. Orbax only detects
preemption through JAX's multi-host service, so single-host jobs need this handler."""

import contextlib
import signal
import threading

from absl import logging


class StopRequest:
  """Set by a signal; the training loop polls it between steps."""

  def __init__(self):
    self._event = threading.Event()
    self.signal_name = None

  def set(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: stopping after the current step and saving a checkpoint", self.signal_name)
    self._event.set()

  def __bool__(self) -> bool:
    return self._event.is_set()


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT)):
  """Installs the handlers (main thread only) and restores the previous ones on exit."""
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return
  previous = {s: signal.signal(s, request.set) for s in signals}
  try:
    yield request
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
