"""Errors a user can cause, reported at the edge as one line, and the process exit codes."""

import functools
import os
import re
import sys
from typing import Callable, NoReturn, TypeVar

from absl import logging

T = TypeVar("T")

EXIT_USER_ERROR = 2  # Bad flag, config, path, image or checkpoint: nothing was changed.
EXIT_NON_FINITE = 3  # The loss turned NaN/Inf: the last good checkpoint is kept.
EXIT_INTERRUPTED = 75  # SIGTERM/SIGINT: a checkpoint was saved; run the same command to resume.


class UserError(Exception):
  """A problem the user can fix; the message names the thing and the fix."""


class ConfigError(UserError):
  """The config cannot be trained as given."""


class DataError(UserError):
  """Fashion-MNIST could not be found or read."""


class CheckpointError(UserError):
  """A workdir's checkpoints are missing, unreadable or do not fit the config."""


class ImageError(UserError):
  """An input image is missing, unreadable, too large or not decodable."""


class NonFiniteLossError(Exception):
  """Training produced a NaN/Inf loss."""


class Interrupted(Exception):
  """Training stopped on a signal after saving a checkpoint."""


def fail(message: str, code: int) -> NoReturn:
  """Ends the process with one `error:` line (after the log lines before it) and `code`."""
  logging.flush()
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def reported(fn: Callable[..., T]) -> Callable[..., T]:
  """`fn`, with an error of known cause ending the process in one line and its exit code."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except UserError as e:
      fail(str(e), EXIT_USER_ERROR)
    except NonFiniteLossError as e:
      fail(str(e), EXIT_NON_FINITE)
    except Interrupted as e:
      fail(str(e), EXIT_INTERRUPTED)

  return wrapper


def exit_peer_lost(error: BaseException) -> NoReturn:
  """Another process of a multi-process run is gone: one line and exit at once (EXIT_INTERRUPTED).

  os._exit skips jax.distributed's shutdown barrier (which would wait out the heartbeat timeout for
  the dead process, then abort with a stack dump) and Orbax's waits on the same barriers; every
  checkpoint committed before stays intact.
  """
  import jax  # pylint: disable=g-import-not-at-top
  reason = re.sub(r"(Error dispatching computation: )+", "", " ".join(str(error).split()))
  logging.flush()
  sys.stderr.write(f"error: process {jax.process_index()} of {jax.process_count()}: another process of this run "
                   f"stopped ({reason[:300]}); the checkpoints saved so far are intact: restart every "
                   "process with the same command to resume\n")
  sys.stderr.flush()
  os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access
