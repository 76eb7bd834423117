"""Command line: python -m fmnist_jax.main --config=experiments/base.py --workdir=runs/x [--config.F=V]."""

import inspect
import os
import re
import sys
from typing import Optional, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_lib

from fmnist_jax import cli
from fmnist_jax import config_checks
from fmnist_jax import errors
from fmnist_jax import model_families
from fmnist_jax import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py); override any of "
                                "its fields with --config.FIELD=VALUE (--help lists them).", lock_config=True)
cli.define_workdir("The run's folder: checkpoints/, train/ and eval/ event files, config.json, history.jsonl "
                   "and lock; rerunning with the same folder resumes the run.", required=True)
flags.DEFINE_bool("distributed", False, "Many processes, one data-parallel run (several hosts, or one process "
                  "per GPU): start each with the same flags; they join through jax.distributed.initialize() "
                  "(see --coordinator_address, --num_processes, --process_id and docs/scale.md).")
flags.mark_flag_as_required("config")


quiet_library_logs = cli.quiet_library_logs  # Installed by cli.run_app; kept for callers of setup_process.


def parse_flags(argv):
  """absl's flag parsing, with every mistake reported in one line and exit code 2.

  The config file is loaded here first, so that its own errors (a missing file, a syntax error, no
  get_config(), a get_config() that raises) are reported with their cause, and a repeated
  --config.FIELD takes its last value whatever its type. ml_collections raises an unknown
  --config.FIELD as AttributeError: absl would print a traceback. `--config.model.name=F` naming
  another family than the file's model section switches the section (model_families.switch).
  """
  config, switch_to, model_flags = None, None, []
  if not cli.asks_for_help(argv):
    config = load_config_file(flag_value(argv, "config"))
    argv = cli.last_flag_wins(argv, "config", lambda field: field_type(config, field) is bool)
    switch_to, argv, model_flags = _family_switch(argv, config)
  rest = parse_overrides(argv, ("config",), more_help=lambda: config_fields(flag_value(argv, "config")))
  if switch_to is not None:
    _switch_family(FLAGS.config, switch_to, argv[0], model_flags)
  return rest


def parse_overrides(argv, names: Sequence[str], more_help=None):
  """cli.parse_flags for a program whose config-file flags are `names`: ml_collections reads their
  --NAME.FIELD overrides from sys.argv and raises an unknown FIELD as AttributeError (absl would print
  a traceback); here it is one `error:` line, exit 2."""
  saved_argv = sys.argv
  sys.argv = argv
  try:
    return cli.parse_flags(argv, more_help=more_help)
  except (AttributeError, KeyError) as e:  # AttributeError(KeyError("'name'\nDid you mean ...")).
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    flags_named = " or ".join(f"--{name}.FIELD" for name in names)
    errors.fail(f"unknown config field {cli.one_line(e.args[0] if e.args else e)}; a {flags_named} flag must "
                f"name a field of {'the' if len(names) == 1 else 'its'} config file", errors.EXIT_USER_ERROR)
  finally:
    sys.argv = saved_argv


_MODEL_FLAG = re.compile(r"--?(no)?config\.model\.(\w+)(=.*)?", re.DOTALL)


def _family_switch(argv, config):
  """(family, argv without its --config.model.* flags, those flags) when --config.model.name names
  another family than the config's model section holds; else (None, argv, [])."""
  name = flag_value(argv, "config.model.name")
  if config is None or name not in model_families.NAMES or name == model_families.family_of(config.model):
    return None, argv, []
  target = model_families.defaults(name)
  kept, pulled, i = argv[:1], [], 1
  while i < len(argv):
    if argv[i] == "--":
      kept += argv[i:]
      break
    match = _MODEL_FLAG.fullmatch(argv[i])
    end = i + 1
    if match and match.group(3) is None and not match.group(1) and not (
        match.group(2) in target and isinstance(target[match.group(2)], bool)):
      end = i + 2  # `--config.model.f value`
    (pulled if match else kept).extend(argv[i:end])
    i = end
  return name, kept, pulled


def _switch_family(config, name: str, program: str, model_flags) -> None:
  """config.model becomes family `name`'s defaults with the --config.model.* flags applied, each
  parsed as that family's field (one error line for a field it does not have)."""
  fields = [m.group(2) for m in map(_MODEL_FLAG.fullmatch, model_flags) if m and m.group(2) != "name"]
  model_families.check_fields(name, fields)
  section = ml_collections.ConfigDict({"model": model_families.defaults(name)})
  values = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", section, flag_values=values, sys_argv=[program, *model_flags])
  try:
    values([program, *model_flags])
  except flags.Error as e:
    raise errors.ConfigError(f"{cli.one_line(e)} (see --help)") from e
  model_families.switch(config, name, {f: values.config.model[f] for f in fields})


def load_config_file(spec: Optional[str], flag: str = "--config"):
  """The ConfigDict of `--config=PATH[:VARIANT]` (ml_collections passes VARIANT to get_config); ConfigError
  if the file cannot give one, naming `flag`. None when the flag is absent (absl then reports the required flag)."""
  if spec is None:
    return None
  path, variant = _split_config_spec(spec)
  get_config = cli.load_file_function(path, "get_config", flag)
  if variant is not None:
    variants = getattr(get_config, "__globals__", {}).get("VARIANTS")
    try:
      takes_variant = bool(inspect.signature(get_config).parameters)
    except (TypeError, ValueError):
      takes_variant = True
    if not takes_variant:
      raise errors.ConfigError(f"{flag}={spec}: {path} takes no variant; drop ':{variant}' ({flag}={path})")
    if variants is not None and variant not in variants:
      raise errors.ConfigError(f"{flag}={spec}: {path} has no variant {variant!r}; its variants: "
                               + ", ".join(f"{flag}={path}:{v}" for v in variants))
  try:
    config = get_config(*([variant] if variant is not None else []))
  except Exception as e:  # pylint: disable=broad-except  # Any error in the user's file is theirs to fix.
    if variant is not None and isinstance(e, (TypeError, ValueError)):
      raise errors.ConfigError(f"{flag}={spec}: get_config() refused the variant {variant!r} "
                               f"({cli.describe(e)})") from e
    raise errors.ConfigError(f"{flag}={path}: get_config() failed ({cli.describe(e)}); fix the file") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise errors.ConfigError(f"{flag}={path}: get_config() returned {type(config).__name__}; return an "
                             "ml_collections.ConfigDict")
  return config


def _split_config_spec(spec: str):
  """(path, variant or None) of `PATH[:VARIANT]`: a path may itself hold ':' (`my:cfg.py`, `my:cfg.py:cpu`)."""
  if os.path.isfile(spec) or ":" not in spec:
    return spec, None
  for i in reversed([i for i, c in enumerate(spec) if c == ":"]):
    if os.path.isfile(spec[:i]):
      return spec[:i], spec[i + 1:]
  path, variant = spec.split(":", 1)
  return path, variant


class _ConfigFileParser(config_flags_lib.ConfigFileFlagParser):
  """ml_collections' parser of --config, reading the file as load_config_file does (a path may hold ':')."""

  def parse(self, path):
    config = load_config_file(path)
    if self._lock_config:
      config.lock()
    return config


FLAGS["config"].parser = _ConfigFileParser("config", lock_config=True)


def flag_value(argv, name: str) -> Optional[str]:
  """The last value of --name in `argv` (`--name=v` or `--name v`), else None."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    if arg.lstrip("-") == name and arg.startswith("-") and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith("-") and arg.lstrip("-").startswith(f"{name}="):
      value = arg.split("=", 1)[1]
  return value


def field_type(config, field: str):
  """The type of the dotted `field` of `config`, or None if it has no such field."""
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    return None
  return node.get_type(leaf)


def config_fields(spec: Optional[str] = None) -> str:
  """The --config.FIELD flags with the values of `spec`'s config (default: base.py), for --help."""
  from fmnist_jax import run_folder  # pylint: disable=g-import-not-at-top
  name, config = "experiments/base.py, where each has a comment", run_folder.default_config()
  if spec is not None:
    try:
      name, config = spec, load_config_file(spec)
    except errors.UserError as e:
      name = f"experiments/base.py, where each has a comment ({e})"

  def line(field, value):
    allowed = config_checks.ENUMERATED_FIELDS.get(field)
    return f"  --config.{field}={value!r}" + (f"  (one of: {', '.join(allowed)})" if allowed else "")

  lines = [line(field, value) for field, value in run_folder.flat(config)]
  family = model_families.family_of(config.model)
  for other in model_families.NAMES:
    if other != family:
      fields = ", ".join(f"{k}={v!r}" for k, v in model_families.defaults(other).items() if k != "name")
      lines.append(f"  --config.model.name={other} replaces the model fields with its own: {fields}")
  return (f"The config fields with the values of {name} (override with --config.FIELD=VALUE):\n"
          + "\n".join(lines))


# --distributed's own arguments (docs/scale.md); without them jax.distributed detects the cluster.
flags.DEFINE_string("coordinator_address", None, "--distributed: HOST:PORT of process 0, which every process "
                    "reaches (default: detected from Cloud TPU, SLURM, Open MPI or Kubernetes).")
flags.DEFINE_integer("num_processes", None, "--distributed: how many processes the run has, one per host or "
                     "per GPU (default: detected).", lower_bound=1)
flags.DEFINE_integer("process_id", None, "--distributed: this process's index, 0 .. num_processes-1 (default: "
                     "detected).", lower_bound=0)
DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id")


def setup_process() -> None:
  """Before any JAX work (shared with fmnist_jax.sweep): quiet logs, the runtime settings, joining the hosts."""
  quiet_library_logs()
  runtime.configure_process(FLAGS.config.runtime)
  given = {name: FLAGS[name].value for name in DISTRIBUTED_FLAGS if FLAGS[name].value is not None}
  if given and not FLAGS.distributed:
    raise errors.ConfigError(f"--{next(iter(given))} is for a run of many processes; add --distributed")
  if FLAGS.distributed:
    from fmnist_jax import parallel  # pylint: disable=g-import-not-at-top  # Imports jax.
    parallel.join_processes(FLAGS.config.runtime, **given)


def main(argv):
  del argv  # parse_flags refused positional arguments.
  config_checks.validate(FLAGS.config)  # Before JAX and TensorFlow load.
  setup_process()
  from fmnist_jax import train  # pylint: disable=g-import-not-at-top  # After flags: keeps --help fast.
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run() -> None:
  """The `fmnist-train` console script."""
  cli.run_app(main, parse_flags, help_modules=[__name__])


if __name__ == "__main__":
  run()
