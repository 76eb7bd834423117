"""SIGTERM/SIGINT at any moment end the process with errors.EXIT_INTERRUPTED, nothing half-written.

While training steps run (`stop_on_signals`): finish the current step, checkpoint, flush, exit.
Orbax only detects preemption through JAX's multi-host service, so single-host jobs need this
handler. Before and after them (`exit_at_once`, installed by the command lines at start: flags,
data loading, compiling, the final evaluation): exit at once, since every file is written
atomically (config.json by rename, history.jsonl in one append, checkpoints by Orbax's commit).
"""

import contextlib
import os
import signal
import sys
import threading

from absl import logging

from fmnist_jax import errors

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Set by a signal; the training loop polls it between steps."""

  def __init__(self):
    self._event = threading.Event()
    self.signal_name = None
    self._agreed = None  # Of many processes: whether any had a signal at the last agree().

  def set(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: stopping after the current step and saving a checkpoint", self.signal_name)
    self._event.set()

  def __bool__(self) -> bool:
    return self._event.is_set() if self._agreed is None else self._agreed

  def agree(self) -> None:
    """Of many processes (jax.distributed), called by each after the same step: from then on the
    request is set in all of them if a signal reached any, and in none otherwise (a signal arriving
    later counts at the next agree()), so they stop after the same step. One process: nothing."""
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() == 1:
      return
    from fmnist_jax import parallel  # pylint: disable=g-import-not-at-top
    self._agreed = parallel.any_process(self._event.is_set())
    if self._agreed and self.signal_name is None:
      self.signal_name = "a signal to another process"


def exit_at_once() -> None:
  """For the whole process (main thread only): a signal ends it at once; stop_on_signals takes over
  while training steps run."""
  for s in SIGNALS:
    signal.signal(s, _exit_now)


def _exit_now(signum, frame) -> None:
  del frame
  logging.flush()
  sys.stderr.write(f"error: stopped by {signal.Signals(signum).name} outside the training steps (start-up or the "
                   "end: nothing half-written, every saved checkpoint intact); run the same command to resume\n")
  sys.stderr.flush()
  os._exit(errors.EXIT_INTERRUPTED)  # pylint: disable=protected-access  # No teardown to wait for: see above.


@contextlib.contextmanager
def stop_on_signals(signals=SIGNALS):
  """Installs the handlers (main thread only) and restores the previous ones on exit."""
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return
  previous = {s: signal.signal(s, request.set) for s in signals}
  try:
    yield request
  finally:
    # Of many processes stopping together, each must reach jax.distributed's shutdown barrier: a
    # second signal (one per process, sent at different moments) no longer ends a process at once.
    stopping_together = request._agreed  # pylint: disable=protected-access
    for s, handler in previous.items():
      signal.signal(s, signal.SIG_IGN if stopping_together else handler)
