"""Figures of runs: training curves read from event files, and the evaluation's figures.

Curves are read with TensorBoard's own EventAccumulator, which works without TensorFlow. Our
writers store TF2-style tensor scalars; legacy `simple_value` scalars are read as well. A sweep
folder (any folder holding runs below it) is drawn as one overlay per metric.
"""

import csv
import dataclasses
import glob
import io
import os
from typing import Dict, List, Optional, Sequence

from absl import logging
from matplotlib import figure
import numpy as np
from PIL import Image

import fmnist_jax
from fmnist_jax import errors
from fmnist_jax import run_folder

SPLITS = ("train", "eval")  # Event-file subfolders of a workdir, as fmnist_jax.train writes them.
CURVE_METRICS = ("loss", "accuracy", "precision")  # Eval recall equals accuracy on the balanced test split.
FIGURE_WIDTH_IN, CURVE_HEIGHT_IN, DPI = 10.0, 5.5, 100  # 1000 px wide.
_SPLIT_STYLE = {"train": {"linestyle": "-", "marker": "."}, "eval": {"linestyle": "--", "marker": "o", "markersize": 3}}
_SPLIT_TITLE = "train: mean over each logging window; eval: full test split"


@dataclasses.dataclass(frozen=True)
class Series:
  steps: np.ndarray  # int, increasing
  values: np.ndarray  # float


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  steps_per_epoch: int
  scalars: Dict[str, Dict[str, Series]]  # split -> tag -> Series
  experiment: Dict[str, object] = dataclasses.field(default_factory=dict)  # Config fields but seed and runtime.*.


def experiment(config) -> Dict[str, object]:
  """The dotted fields of `config` that define the experiment: all but the seed and config.runtime
  (how it executed). Runs equal in these are repeats of one experiment."""
  return {k: v for k, v in run_folder.flat(config) if k != "seed" and not k.startswith("runtime.")}


def find_runs(path: str) -> List[str]:
  """`path` if it is a run (holds config.json), else every run below it, sorted."""
  if not os.path.isdir(path):
    raise errors.UserError(f"--workdir={path} is not a folder; point it at a training workdir or a sweep folder")
  if run_folder.is_run(path):
    return [path]
  runs = run_folder.runs_below(path)
  if not runs:
    raise errors.UserError(f"no run in {path}: expected a workdir written by training (config.json, train/ and "
                           "eval/ event files) or a folder of such workdirs")
  return runs


def read_scalars(logdir: str) -> Dict[str, Series]:
  """tag -> Series of every scalar in `logdir`'s event files; a step written twice keeps its latest value.

  A resumed run rewrites the steps after its checkpoint into a new event file, so the newest write wins.
  """
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  accumulator = event_accumulator.EventAccumulator(
      logdir, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0})  # 0: keep all.
  accumulator.Reload()
  tags = accumulator.Tags()
  points = {}  # tag -> [(step, wall_time, value)]
  for tag in tags["tensors"]:
    if accumulator.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
      continue  # e.g. the hparams plugin's session info.
    points[tag] = [(e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto)))
                   for e in accumulator.Tensors(tag)]
  for tag in tags["scalars"]:  # Legacy simple_value summaries.
    points.setdefault(tag, []).extend((e.step, e.wall_time, e.value) for e in accumulator.Scalars(tag))
  out = {}
  for tag, rows in points.items():
    latest = {step: value for step, _, value in sorted(rows, key=lambda r: r[1])}
    steps = np.array(sorted(latest), np.int64)
    out[tag] = Series(steps, np.array([latest[s] for s in steps], np.float64))
  return out


def load_run(path: str, name: Optional[str] = None) -> Run:
  """Reads one workdir's train/ and eval/ scalars; raises UserError if it holds none."""
  config = run_folder.load_config(path)
  scalars = {}
  for split in SPLITS:
    logdir = os.path.join(path, split)
    if glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
      scalars[split] = read_scalars(logdir)
  if not any(scalars.values()):
    raise errors.UserError(f"no scalar summaries in {path}/train or {path}/eval event files; train the run "
                           "(or let it reach its first log step) before plotting")
  return Run(name=name or os.path.basename(os.path.normpath(path)),
             steps_per_epoch=fmnist_jax.SPLIT_SIZES["train"] // config.batch_size, scalars=scalars,
             experiment=experiment(config))


def load_runs(path: str) -> List[Run]:
  """The run at `path`, or every run of the sweep folder `path` (named by their relative paths)."""
  paths = find_runs(path)
  if len(paths) == 1:
    return [load_run(paths[0])]
  return [load_run(p, os.path.relpath(p, path)) for p in paths]


def curve_figure(runs: Sequence[Run], metric: str) -> figure.Figure:
  """`metric` against steps (epochs on the top axis), train and eval of every run on one chart."""
  fig = figure.Figure(figsize=(FIGURE_WIDTH_IN, CURVE_HEIGHT_IN), dpi=DPI, layout="constrained")
  ax = fig.add_subplot()
  for i, run in enumerate(runs):
    for j, split in enumerate(SPLITS):
      series = run.scalars.get(split, {}).get(metric)
      if series is None:
        continue
      label = split if len(runs) == 1 else f"{run.name} {split}"
      color = f"C{j if len(runs) == 1 else i % 10}"  # One run: colour by split; a sweep: by run.
      ax.plot(series.steps, series.values, color=color, label=label, **_SPLIT_STYLE[split])
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  ax.set_title(f"{metric} ({_SPLIT_TITLE})", fontsize="medium")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  steps_per_epoch = {run.steps_per_epoch for run in runs}
  if len(steps_per_epoch) == 1:
    (spe,) = steps_per_epoch
    top = ax.secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
    top.set_xlabel("epoch")
  else:
    logging.warning("runs differ in batch size: %s has no epoch axis", metric)
  return fig


def save_figure(fig: figure.Figure, path: str) -> str:
  """Writes `fig` as a 256-colour PNG (looks the same for charts, a third of the bytes); returns `path`."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI)
  Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)
  return path


def write_curves(runs: Sequence[Run], out_dir: str, metrics: Sequence[str] = CURVE_METRICS) -> List[str]:
  """`<out_dir>/<metric>.png` for each of `metrics` that some run logged; returns the paths written."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for metric in metrics:
    if not any(metric in tags for run in runs for tags in run.scalars.values()):
      logging.warning("no run logged %r: no figure for it", metric)
      continue
    paths.append(save_figure(curve_figure(runs, metric), os.path.join(out_dir, f"{metric}.png")))
  if not paths:
    raise errors.UserError(f"the runs logged none of {', '.join(metrics)}; pick metrics they logged")
  return paths


# --- Final numbers ----------------------------------------------------------------------------


def final_values(run: Run, metrics: Sequence[str] = CURVE_METRICS) -> Dict[str, float]:
  """`<split> <metric>` -> its last logged value: eval at the last step, train over the last logging window."""
  values = {}
  for split in SPLITS:
    for metric in metrics:
      series = run.scalars.get(split, {}).get(metric)
      if series is not None and len(series.steps):
        values[f"{split} {metric}"] = float(series.values[-1])
  eval_loss = run.scalars.get("eval", {}).get("loss")
  values["step"] = int(eval_loss.steps[-1]) if eval_loss is not None and len(eval_loss.steps) else -1
  return values


def final_table(runs: Sequence[Run], metrics: Sequence[str] = CURVE_METRICS) -> List[Dict[str, object]]:
  """One row of final values per run; then, for each experiment repeated over seeds (runs that differ
  only in seed), its mean and sample std (ddof=1) rows, labelled by what sets it apart from the others.

  Only columns every run logged are kept, so a summary never mixes runs that lack a metric.
  """
  per_run = [final_values(run, metrics) for run in runs]
  columns = [c for c in per_run[0] if all(c in values for values in per_run)]
  rows = [{"run": run.name, **{c: values[c] for c in columns}} for run, values in zip(runs, per_run)]
  groups: Dict[str, List[int]] = {}
  for i, run in enumerate(runs):
    groups.setdefault(repr(sorted(run.experiment.items())), []).append(i)
  varying = sorted({k for run in runs for k, v in run.experiment.items()
                    if any(other.experiment.get(k) != v for other in runs)})
  for members in groups.values():
    if len(members) < 2:
      continue
    label = ", ".join(f"{k}={runs[members[0]].experiment.get(k)}" for k in varying)
    table = np.array([[per_run[i][c] for c in columns] for i in members], np.float64)
    for stat, values in (("mean", table.mean(axis=0)), ("std", table.std(axis=0, ddof=1))):
      rows.append({"run": f"{stat} ({label})" if label else stat, **dict(zip(columns, values.tolist()))})
    steps = {per_run[i]["step"] for i in members}
    if len(steps) > 1:
      logging.warning("the runs end at different steps %s: their summary mixes unfinished runs", sorted(steps))
  if len(groups) > 1:
    logging.info("%d experiments (runs differing in more than the seed): mean and std only over each one's seeds",
                 len(groups))
  return rows


def write_final_table(rows: Sequence[Dict[str, object]], path: str) -> str:
  """`rows` as CSV at `path`; returns `path`."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return path


def format_final_table(rows: Sequence[Dict[str, object]]) -> str:
  """A markdown table of `rows` (4 decimals; the step column as an integer)."""
  columns = list(rows[0])
  cell = lambda c, v: str(v) if c == "run" else (f"{v:.0f}" if c == "step" else f"{v:.4f}")
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(c, row[c]) for c in columns) + " |" for row in rows]
  return "\n".join(lines)


# --- Evaluation figures -----------------------------------------------------------------------


def confusion_figure(counts: np.ndarray, class_names: Sequence[str], title: str) -> figure.Figure:
  """Counts [true, predicted], coloured by the share of each true class (its recall row)."""
  fig = figure.Figure(figsize=(FIGURE_WIDTH_IN, FIGURE_WIDTH_IN * 0.85), dpi=DPI, layout="constrained")
  ax = fig.add_subplot()
  shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
  for (t, p), n in np.ndenumerate(counts):
    ax.text(p, t, str(n), ha="center", va="center", fontsize="small",
            color="white" if shares[t, p] > 0.5 else "black")
  ticks = np.arange(len(class_names))
  ax.set_xticks(ticks, class_names, rotation=45, ha="right")
  ax.set_yticks(ticks, class_names)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title)
  return fig


def image_grid_figure(images: np.ndarray, captions: Sequence[str], title: str,
                      columns: int = 5) -> figure.Figure:
  """uint8 images [N, H, W, 1] in a grid, each with its caption."""
  rows = max(1, -(-len(images) // columns))
  fig = figure.Figure(figsize=(FIGURE_WIDTH_IN * 0.8, rows * 2.1 + 0.4), dpi=DPI, layout="constrained")
  axes = fig.subplots(rows, columns, squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, image, caption in zip(axes.flat, images, captions):
    ax.imshow(image[..., 0], cmap="gray_r", vmin=0, vmax=255)
    ax.set_title(caption, fontsize="small")
  fig.suptitle(title)
  return fig
