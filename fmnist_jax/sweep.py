"""Sweeps: train every point of `experiments/sweeps/*.py` in its own workdir, then tabulate and plot them.

  python -m fmnist_jax.sweep --config=experiments/base.py --sweep=experiments/sweeps/lr.py \
      --workdir=runs/lr [--config.F=V ...] [--vmap_members=N] [--part=I/N] [--distributed]

A sweep file defines `get_sweep()` returning a list of override dicts with dotted keys
(`{"model.dense_features": 512, "seed": 1}`); `--config.*` flags apply to every point. Point
`<name>` trains in `<workdir>/<name>/` (its own checkpoints and event files, so TensorBoard on
`<workdir>` compares the points). Points that differ only in seed and optimizer hyperparameters
train together, vmapped over a model axis (one compiled program; `train.py`), up to
`--vmap_members` at a time; the others train one by one with `train.train_and_evaluate`, sharing
compiled programs through XLA's persistent cache (`<workdir>/compilation_cache` unless
`--config.runtime.compilation_cache_dir` names another).
A finished point leaves `sweep_result.json` and is skipped by a re-run with the same config; a
killed one resumes from its newest checkpoint. `results.csv`, `results.md` and `results.png` in
`<workdir>` are rewritten from the finished points after every group, so N processes can share a
sweep with `--part=I/N` (e.g. one per GPU).
"""

import contextlib
import csv
import dataclasses
import json
import os
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import flags
from absl import logging
import ml_collections

from fmnist_jax import cli
from fmnist_jax import config_checks
from fmnist_jax import errors
from fmnist_jax import model_families
from fmnist_jax import run_folder

RESULT_FILE = "sweep_result.json"  # In each point's workdir once it finished.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax.monitoring event of each XLA compile.
CACHE_SUBDIR = "compilation_cache"  # The CLI's default config.runtime.compilation_cache_dir, inside the sweep folder.
METRICS = ("accuracy", "loss", "precision", "recall")  # Final evaluation on the test split.
FIGURE_WIDTH_IN, BAR_HEIGHT_IN, DPI = 10.0, 0.35, 100
# A finished point whose final accuracy is below this multiple of chance (1 / num_classes) learned
# nothing: its loss exploded without turning NaN (or it barely trained). Status "chance", not "ok".
CHANCE_MULTIPLE = 1.5


@dataclasses.dataclass(frozen=True)
class Point:
  name: str  # Sub-workdir name, from the overrides.
  overrides: Dict[str, Any]
  config: ml_collections.ConfigDict
  workdir: str


# --- Sweep definitions ------------------------------------------------------------------------


def load_sweep(path: str) -> List[Dict[str, Any]]:
  """The override dicts of the sweep file at `path`, or ConfigError naming what is wrong."""
  points = cli.call_file_function(path, "get_sweep", "--sweep")
  if not isinstance(points, (list, tuple)) or not points:
    raise errors.ConfigError(f"--sweep={path}: get_sweep() returned {type(points).__name__} {points!r:.80}; "
                             "return a non-empty list of override dicts")
  for i, point in enumerate(points):
    if not isinstance(point, dict) or not all(isinstance(k, str) for k in point):
      raise errors.ConfigError(f"--sweep={path}: point {i} is {point!r:.80}; each point must be a dict of "
                               "dotted config keys to values")
  return [dict(p) for p in points]


def _format_value(value) -> str:
  if isinstance(value, (list, tuple)):
    return "x".join(_format_value(v) for v in value)
  return str(value)


def point_name(overrides: Dict[str, Any]) -> str:
  """`learning_rate=0.001,seed=1`: readable in TensorBoard's run list and safe as a folder name."""
  if not overrides:
    return "base"
  name = ",".join(f"{k}={_format_value(v)}" for k, v in overrides.items())
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)


def point_config(base: ml_collections.ConfigDict, overrides: Dict[str, Any], where: str):
  """A copy of `base` with `overrides` applied; unknown keys and wrong types are ConfigErrors.

  A `model.name` naming another family than base's model section rebuilds the section from that
  family's defaults with the point's other `model.*` keys (model_families.switch).
  """
  config = base.copy_and_resolve_references()
  for key, value in overrides.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      raise errors.ConfigError(f"{where}: {key} is a whole section; set its fields with dotted keys, e.g. "
                               "{'model.name': 'resnet', 'model.stage_features': (16, 32)}")
    try:
      json.dumps(value)
    except (TypeError, ValueError) as e:
      raise errors.ConfigError(f"{where}: {key}={value!r:.80} is not a JSON value (a number, string, bool, "
                               "None or a tuple of them); the point's result could not be saved") from e
  family = overrides.get("model.name")
  if family in model_families.NAMES and family != model_families.family_of(config.model):
    model_fields = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("model.") and k != "model.name"}
    model_families.switch(config, family, model_fields, where)
    overrides = {k: v for k, v in overrides.items() if not k.startswith("model.")}
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for depth, part in enumerate(parents + [leaf]):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        prefix = ".".join(parents[:depth])
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise errors.ConfigError(f"{where}: unknown config key {key!r}; known keys"
                                 f"{' under ' + prefix if prefix else ''}: {', '.join(known)}")
      if depth < len(parents):
        node = node[part]
    try:
      setattr(node, leaf, value)
    except (TypeError, ValueError, AttributeError) as e:
      raise errors.ConfigError(f"{where}: {key}={value!r} does not fit the config ({e}); "
                               f"use a value of the type of {key}") from e
  return config


def plan(base: ml_collections.ConfigDict, sweep_path: str, workdir: str,
         num_devices: Optional[int] = None) -> List[Point]:
  """The sweep's points, every config checked before anything trains (without `num_devices`: the
  checks config_checks.validate makes before JAX is set up)."""
  points, names = [], {}
  for i, overrides in enumerate(load_sweep(sweep_path)):
    where = f"--sweep={sweep_path} point {i} ({point_name(overrides)})"
    config = point_config(base, overrides, where)
    try:
      config_checks.validate(config, num_devices)
    except errors.ConfigError as e:
      raise errors.ConfigError(f"{where}: {e}") from e
    name = point_name(overrides)
    if name in names:
      raise errors.ConfigError(f"--sweep={sweep_path}: points {names[name]} and {i} are both {name}; "
                               "remove the duplicate")
    names[name] = i
    points.append(Point(name, overrides, config, os.path.join(os.path.abspath(workdir), name)))
  return points


# --- Running ----------------------------------------------------------------------------------


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _finished(point: Point) -> Optional[dict]:
  """The stored result of a point finished earlier with this exact config, else None."""
  try:
    with open(os.path.join(point.workdir, RESULT_FILE)) as f:
      result = json.load(f)
  except (OSError, ValueError):
    return None
  return result if result.get("config") == _config_dict(point.config) else None


def groups(points: Sequence[Point], vmap_members: int) -> List[List[Point]]:
  """Points that can share one vmapped program, in sweep order, at most `vmap_members` per group."""
  from fmnist_jax import train  # pylint: disable=g-import-not-at-top
  by_key: Dict[str, List[Point]] = {}
  for p in points:
    by_key.setdefault(train.program_key(p.config), []).append(p)
  return [members[i:i + vmap_members] for members in by_key.values()
          for i in range(0, len(members), vmap_members)]


@contextlib.contextmanager
def compile_seconds():
  """Seconds XLA spends compiling inside the block, from jax.monitoring's backend-compile events."""
  import jax  # pylint: disable=g-import-not-at-top
  total = [0.0]

  def listen(event, duration, **_):
    if event == COMPILE_EVENT:
      total[0] += duration

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield total
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


def _train_group(group: List[Point], trainers: Dict[str, Any]) -> List[dict]:
  """Trains one group; returns each point's result record.

  `trainers` keeps the trainer of the last vmapped group: the next group of the same program
  reuses its device data and compiled programs.
  """
  from fmnist_jax import train  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  with compile_seconds() as compiling:
    if len(group) == 1:
      try:
        outcomes = [train.Outcome(train.train_and_evaluate(group[0].config, group[0].workdir))]
      except errors.NonFiniteLossError as e:
        outcomes = [train.Outcome({k: float("nan") for k in METRICS}, str(e))]
    else:
      key = train.program_key(group[0].config)
      if key not in trainers:
        trainers.clear()  # One at a time: each holds the dataset on the device.
        trainers[key] = train.Trainer(group[0].config, vmapped=True)
      outcomes = train.train_and_evaluate_many(
          [p.config for p in group], [p.workdir for p in group], trainers[key])
  seconds = time.perf_counter() - start
  logging.info("Group of %d trained in %.1f s, %.1f s of it compiling", len(group), seconds, compiling[0])
  return [{"name": p.name, "overrides": p.overrides, "metrics": o.metrics, "error": o.error,
           "train_time_s": seconds / len(group), "compile_time_s": compiling[0] / len(group),
           "trained_with": len(group), "config": _config_dict(p.config)}
          for p, o in zip(group, outcomes)]


def parse_part(text: str) -> Tuple[int, int]:
  """`--part=I/N` → (I, N): this process trains groups I, I+N, I+2N, ... of the sweep."""
  match = re.fullmatch(r"(\d+)/(\d+)", text)
  if not match or not int(match.group(1)) < int(match.group(2)):
    raise errors.ConfigError(f"--part={text} must be I/N with 0 <= I < N, e.g. --part=0/4 for the first "
                             "of 4 processes")
  return int(match.group(1)), int(match.group(2))


def _finished_records(points: Sequence[Point]) -> List[dict]:
  return [r for r in map(_finished, points) if r is not None]


def run_sweep(base: ml_collections.ConfigDict, sweep_path: str, workdir: str,
              vmap_members: Optional[int] = None, part: Tuple[int, int] = (0, 1)) -> List[dict]:
  """Trains the unfinished points of the sweep (of groups part[0], part[0] + part[1], ...), writes the
  results of every finished point, and returns their records in sweep order."""
  import jax  # pylint: disable=g-import-not-at-top

  from fmnist_jax import runtime  # pylint: disable=g-import-not-at-top
  if vmap_members is None:
    vmap_members = runtime.resolve(base.runtime).vmap_members
  if vmap_members < 1:
    raise errors.ConfigError(f"--vmap_members={vmap_members} must be >= 1 (1 trains every point alone)")
  points = plan(base, sweep_path, workdir, jax.device_count())
  is_chief = jax.process_index() == 0
  index, count = part
  trainers = {}
  mine = []
  for group in groups(points, vmap_members)[index::count]:  # Grouped before skipping: stable across parts.
    mine.append([p for p in group if _finished(p) is None])
    for p in group:
      if p not in mine[-1]:
        logging.info("Point %s finished earlier: skipped", p.name)
  from fmnist_jax import train  # pylint: disable=g-import-not-at-top
  with contextlib.ExitStack() as owner:
    todo = [p for points_of_group in mine for p in points_of_group]
    # Another process on one of them: refused before any work (every process of a --distributed sweep).
    train.own_workdirs(owner, [p.config for p in todo], [p.workdir for p in todo])
    for todo in mine:
      if not todo:
        continue
      logging.info("Training %s (%s)", ", ".join(p.name for p in todo), "vmapped" if len(todo) > 1 else "alone")
      for record in _train_group(todo, trainers):
        if is_chief:
          run_folder.write_text(os.path.join(os.path.abspath(workdir), record["name"], RESULT_FILE),
                                json.dumps(record, indent=2))
      if is_chief:
        write_results(workdir, _finished_records(points))
  records = _finished_records(points)
  if is_chief and records:
    write_results(workdir, records)
  return records


# --- Results ----------------------------------------------------------------------------------


def _rows(records: Sequence[dict]) -> tuple:
  keys = list(dict.fromkeys(k for r in records for k in r["overrides"]))
  header = ["point"] + keys + list(METRICS) + ["train_time_s", "compile_time_s", "trained_with", "status"]
  rows = []
  for r in records:
    rows.append([r["name"]] + [_format_value(r["overrides"].get(k, "")) for k in keys]
                + [r["metrics"][m] for m in METRICS]
                + [round(r["train_time_s"], 1), round(r["compile_time_s"], 1), r["trained_with"], status(r)])
  return header, rows


def status(record: dict) -> str:
  """A point's status: "diverged" (loss turned NaN/Inf), "chance" (final accuracy near chance) or "ok"."""
  if record["error"]:
    return "diverged"
  chance = 1.0 / record["config"]["model"]["num_classes"]
  return "chance" if not record["metrics"]["accuracy"] >= CHANCE_MULTIPLE * chance else "ok"


def write_results(workdir: str, records: Sequence[dict]) -> None:
  """results.csv, results.md and results.png in `workdir`, one row (bar) per point."""
  header, rows = _rows(records)

  def write_csv(path):
    with open(path, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(header + ["error"])
      for r, row in zip(records, rows):
        writer.writerow(row + [r["error"] or ""])

  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    lines.append("| " + " | ".join(f"{v:.4f}" if h in METRICS else str(v) for h, v in zip(header, row)) + " |")
  notes = [f"- {r['name']}: {r['error']}" for r in records if r["error"]]
  notes += [f"- {r['name']}: final accuracy {r['metrics']['accuracy']:.4f} is no better than chance: its loss "
            f"exploded ({r['metrics']['loss']:.4g}) or it barely trained; lower learning_rate"
            for r in records if status(r) == "chance"]
  text = "\n".join(lines) + "\n"
  text += ("\n" + "\n".join(notes) + "\n" if notes else "")
  text += ("\ntrain_time_s: wall seconds of the call that finished the point (data, compiling, training, "
           "evaluation); compile_time_s: the XLA compiling in it. Both are divided by the points trained "
           "with it (trained_with).\n")

  def write_md(path):
    with open(path, "w") as f:
      f.write(text)

  run_folder.write_atomically(os.path.join(workdir, "results.csv"), write_csv)
  run_folder.write_atomically(os.path.join(workdir, "results.md"), write_md)
  run_folder.write_atomically(os.path.join(workdir, "results.png"), lambda path: _plot(path, records))


def _plot(path: str, records: Sequence[dict]) -> None:
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  names = [r["name"] for r in records]
  height = max(2.5, BAR_HEIGHT_IN * len(records) + 1.2)
  fig = figure.Figure(figsize=(FIGURE_WIDTH_IN, height), dpi=DPI, layout="constrained")
  axes = fig.subplots(1, 2, sharey=True)
  for ax, metric in zip(axes, ("accuracy", "loss")):
    values = [r["metrics"][metric] for r in records]
    bars = ax.barh(range(len(records)), values, color=["tab:blue" if status(r) == "ok" else "tab:red" for r in records])
    ax.bar_label(bars, fmt="%.4f", fontsize=8)
    ax.set_title(f"final eval {metric}")
    ax.margins(x=0.2)
  axes[0].set_yticks(range(len(records)), names, fontsize=8)
  axes[0].invert_yaxis()
  fig.suptitle("sweep points (red: loss turned NaN/Inf, or accuracy no better than chance)")
  fig.savefig(path, format="png")


# --- Command line ---------------------------------------------------------------------------


def _define_flags() -> None:
  """Only when run as a program, so importing this module defines no flags."""
  flags.DEFINE_string("sweep", None, "Sweep file: get_sweep() returns a list of override dicts.")
  flags.DEFINE_integer("vmap_members", None, "Most points trained together as one vmapped program "
                       "(points differing only in seed and optimizer hyperparameters); 1 trains each alone. "
                       "Default: 16 on GPU/TPU, 1 on the CPU (fmnist_jax/runtime.py).")
  flags.DEFINE_string("part", "0/1", "I/N: train only groups I, I+N, I+2N, ... of the sweep, e.g. one "
                      "process per GPU (CUDA_VISIBLE_DEVICES=I ... --part=I/N).")
  flags.mark_flag_as_required("sweep")
  flags.FLAGS["workdir"].help = ("The sweep's folder: point <name> trains in <workdir>/<name>/ (a run folder); "
                                 "results.csv, results.md, results.png and compilation_cache/ go here.")


def main(argv):
  del argv  # parse_flags refused positional arguments.
  flag_values = flags.FLAGS
  # Points trained one by one load, not compile, their programs.
  if flag_values.config.runtime.compilation_cache_dir is None:
    flag_values.config.runtime.compilation_cache_dir = os.path.join(os.path.abspath(flag_values.workdir), CACHE_SUBDIR)
  plan(flag_values.config, flag_values.sweep, flag_values.workdir)  # Before JAX.
  from fmnist_jax import main as train_cli  # pylint: disable=g-import-not-at-top
  train_cli.setup_process()
  run_sweep(flag_values.config, flag_values.sweep, flag_values.workdir, flag_values.vmap_members,
            parse_part(flag_values.part))


def run() -> None:
  """The `fmnist-sweep` console script."""
  from fmnist_jax import main as train_cli  # pylint: disable=g-import-not-at-top  # --config, --workdir, --distributed.
  _define_flags()
  cli.run_app(main, train_cli.parse_flags, help_modules=[__name__, train_cli.__name__])


if __name__ == "__main__":
  run()
