"""What every command line shares: flags whose every mistake is one `error:` line and exit 2,
`--help` that exits 0, and the --workdir flag (never empty)."""

import contextlib
import importlib.util
import logging as std_logging
import os
import re
import sys
from typing import Any, Callable, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

from fmnist_jax import errors
from fmnist_jax import preemption

HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")  # absl's: each prints usage and exits.


def run_app(main: Callable[[List[str]], Any], flags_parser: Optional[Callable] = None,
            help_modules: Sequence[str] = ()) -> None:
  """The one way every command line runs: a signal before training exits at once (75), `--help`
  lists `help_modules`' flags, and a user error in flags or in `main` is one `error:` line and its
  exit code (errors.reported)."""
  preemption.exit_at_once()
  quiet_library_logs()
  show_in_help(*help_modules)
  app.run(errors.reported(main), flags_parser=errors.reported(flags_parser or parse_flags))


# Library log chatter a user does not need, by the path of the file logging it -> the lowest level
# kept (all of it with --verbosity=1): Orbax's INFO on every save and restore (its failed writes are
# reported by train in one line, so their tracebacks go too), JAX's probe of a missing libtpu, TFDS's
# notices about dataset variants, matplotlib's font cache.
QUIETED_LIBRARIES = {"/orbax/": std_logging.WARNING, "/jax/_src/xla_bridge.py": std_logging.WARNING,
                     "/tensorflow_datasets/": std_logging.ERROR, "/matplotlib/": std_logging.WARNING}
# Orbax warnings that only describe a read-only reader (predict, evaluate): nothing to act on.
QUIETED_MESSAGES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")
_quieted = []


def _keep_record(record) -> bool:
  if logging.get_verbosity() >= logging.DEBUG:
    return True
  for path, level in QUIETED_LIBRARIES.items():
    if path in record.pathname.replace(os.sep, "/"):
      if path == "/orbax/":
        record.exc_info = record.exc_text = None
        if str(record.msg).startswith(QUIETED_MESSAGES):
          return False
      return record.levelno >= level
  return True


def quiet_library_logs() -> None:
  """Filters QUIETED_LIBRARIES' records from absl's handler (which also prints the standard
  library's loggers, so jax's and matplotlib's records pass it too). Idempotent."""
  if not _quieted:
    logging.get_absl_handler().addFilter(_keep_record)
    _quieted.append(True)


def show_in_help(*module_names: str) -> None:
  """--help of a console script lists the flags of `module_names` (absl lists the flags of the
  module named by sys.argv[0], here the script installed by pip)."""
  for name in module_names:
    for flag in flags.FLAGS.get_key_flags_for_module(name):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  if "workdir" in flags.FLAGS:  # Defined here by define_workdir, for the program.
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["workdir"])


def define_workdir(help_string: str, required: bool = False) -> None:
  """--workdir: an empty or blank value is refused (it would mean the current folder); show_in_help
  lists it with the program's own flags."""
  flags.DEFINE_string("workdir", None, help_string)
  flags.register_validator("workdir", lambda value: value is None or bool(value.strip()),
                           message="--workdir is empty; name a folder, e.g. --workdir=runs/first")
  if required:
    flags.mark_flag_as_required("workdir")


def asks_for_help(argv: List[str]) -> bool:
  return any(arg.lstrip("-").split("=")[0] in HELP_FLAGS for arg in argv[1:] if arg.startswith("-"))


def parse_flags(argv: List[str], positional: bool = False,
                more_help: Optional[Callable[[], str]] = None) -> List[str]:
  """absl's flag parsing, each mistake one line with exit code 2; `--help` prints usage (and
  more_help()) and exits 0. Positional arguments are refused unless `positional`."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    errors.fail(f"{one_line(e)} (see --help)", errors.EXIT_USER_ERROR)
  except SystemExit:  # absl's help flags print the usage, then exit 1.
    if not asks_for_help(argv):
      raise
    if more_help is not None:
      print(more_help())
    sys.exit(0)
  if not positional and len(rest) > 1:
    errors.fail(f"unexpected arguments {' '.join(rest[1:])}; every setting is a --flag (see --help)",
                errors.EXIT_USER_ERROR)
  return rest


def parse_flags_and_paths(argv: List[str]) -> List[str]:
  """parse_flags for a program that takes positional arguments (file paths)."""
  return parse_flags(argv, positional=True)


def check_output_folder(flag: str, path: str) -> None:
  """`path` is, or can be made, a writable folder: checked before the work whose results go there
  (nothing is created yet)."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise errors.ConfigError(f"{flag}={path}: {existing} is a file, not a folder; name a folder")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise errors.ConfigError(f"{flag}={path}: {existing} is not writable; choose a writable folder")


@contextlib.contextmanager
def output_folder(flag: str, path: str):
  """Creates `path` (a folder for results) before the work that fills it, so that a path that cannot
  be created costs one line, not the work; the folders it created are removed again if the block fails
  leaving them empty."""
  check_output_folder(flag, path)
  created, folder = [], os.path.abspath(path)
  while not os.path.exists(folder):
    created.append(folder)
    folder = os.path.dirname(folder)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise errors.ConfigError(f"{flag}={path}: cannot create it ({e.strerror or e}); choose a writable folder") from e
  ok = False
  try:
    yield
    ok = True
  finally:
    for folder in created if not ok else ():
      try:
        os.rmdir(folder)
      except OSError:
        break


def call_file_function(path: str, function: str, flag: str, *args) -> Any:
  """Runs the Python file at `path` and returns `function(*args)` from it; any failure of the user's
  file is a ConfigError naming `flag`, the file and the cause."""
  fn = load_file_function(path, function, flag)
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(f"{flag}={path}: {function}() failed ({describe(e)}); fix the file") from e


def load_file_function(path: str, function: str, flag: str) -> Callable:
  """`function` of the Python file at `path` (run once); a failure is a ConfigError naming `flag`."""
  if not os.path.isfile(path):
    raise errors.ConfigError(f"{flag}={path}: no such file; point it at a file defining {function}()")
  spec = importlib.util.spec_from_file_location(f"fmnist_user_file_{function}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  # Any error in the user's file is theirs to fix.
    raise errors.ConfigError(f"{flag}={path} cannot be loaded ({describe(e)}); fix the file") from e
  if not callable(getattr(module, function, None)):
    raise errors.ConfigError(f"{flag}={path} has no {function}(); define {function}() in it")
  return getattr(module, function)


def last_flag_wins(argv: List[str], prefix: str, is_bool: Callable[[str], bool]) -> List[str]:
  """`argv` with each repeated `--PREFIX.FIELD` flag kept only at its last occurrence, in all its forms
  (`--p.f=v`, `--p.f v`, `--p.f` / `--nop.f` for booleans). ml_collections joins repeated tuple flags
  into one tuple; every other flag type takes the last value: now all take the last."""
  pattern = re.compile(rf"--?(no)?{re.escape(prefix)}\.([\w.]+)(=.*)?", re.DOTALL)
  spans, i = [], 1  # (field, first index, end index) of every occurrence.
  while i < len(argv) and argv[i] != "--":
    match = pattern.fullmatch(argv[i])
    end = i + 1
    if match and match.group(3) is None and not match.group(1) and not is_bool(match.group(2)):
      end = i + 2  # `--p.f value`
    if match:
      spans.append((match.group(2), i, end))
    i = end
  last = {field: start for field, start, _ in spans}
  dropped = {j for field, start, end in spans if last[field] != start for j in range(start, end)}
  return [arg for j, arg in enumerate(argv) if j not in dropped]


def describe(e: Exception) -> str:
  return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def one_line(text) -> str:
  return " ".join(str(text).split())[:500]
