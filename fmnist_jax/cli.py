"""What every command line shares: flags whose every mistake is one `error:` line and exit 2,
`--help` that exits 0, and the --workdir flag (never empty)."""

import sys
from typing import Callable, List, Optional

from absl import flags

from fmnist_jax import errors

HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")  # absl's: each prints usage and exits.


def define_workdir(help_string: str, required: bool = False) -> None:
  """--workdir: an empty or blank value is refused (it would mean the current folder)."""
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


def one_line(text) -> str:
  return " ".join(str(text).split())[:500]
