"""The GPU measurements of the README as one call that always returns figures: `benchmarks/gpu_suite.sh`.

Items run in the order of their value, each in its own process, within a time budget (BUDGET_S): an
item whose estimate no longer fits is skipped, and each runs under a timeout of the budget left, so the
suite ends in time even when a GPU step is slower than planned. `summary.json` in OUT holds every
figure with the device it was measured on, and which items ran, were skipped, failed or timed out;
`scripts/fill_gpu_rows.py` writes the README's GPU rows from it. SMOKE=1 runs a few steps of tiny
models per item (the same commands otherwise), on any device: the CPU test of the suite.
Runs without TensorFlow (the GPU machines have none): data from the IDX files in FMNIST_DATA.
"""

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

FULL_BUDGET_S = 420  # Default budget in full mode: 7 minutes, within the device's 8 of one command.
SMOKE_BUDGET_S = 1200  # Default budget in smoke mode: every item runs on a slow CPU.
SUMMARY = "summary.json"
# Smoke mode: tiny models and a few steps, so every item's command runs end to end in seconds on a CPU.
SMOKE_CNN = ["--config.model.conv_features=(8,16)", "--config.model.dense_features=32"]
SMOKE_RESNET = ["--config.model.stem_features=8", "--config.model.stage_features=(8,8,8)",
                "--config.model.blocks_per_stage=(1,1,1)"]
SMOKE_STEPS = 3  # Training steps of each smoke run.


@dataclasses.dataclass(frozen=True)
class Item:
  name: str
  figures: str  # What it measures, for summary.json.
  estimate_s: int  # Full mode on one H100 (a guess until measured; the budget acts on it).
  run: Callable[["Suite"], Dict]  # Runs the item; returns its figures.


class Suite:
  """Where the items run: the interpreter, data, output folder, mode, and the deadline."""

  def __init__(self, out: str, data: str, smoke: bool, budget_s: float, python: str = sys.executable):
    self.out, self.data, self.smoke, self.budget_s, self.python = out, data, smoke, budget_s, python
    self.start = time.monotonic()
    self.work = tempfile.mkdtemp(prefix="gpu_suite_")

  def left_s(self) -> float:
    return self.budget_s - (time.monotonic() - self.start)

  def data_flags(self, prefix: str = "config") -> List[str]:
    return [f"--{prefix}.data.source=idx", f"--{prefix}.data.idx_dirs=('{self.data}',)"]

  def shrink(self, prefix: str, resnet: bool = False) -> List[str]:
    """Smoke mode's tiny model and step count (nothing in full mode)."""
    if not self.smoke:
      return []
    model = SMOKE_RESNET if resnet else SMOKE_CNN
    return [f.replace("--config.", f"--{prefix}.") for f in model] + [
        f"--{prefix}.num_train_steps={SMOKE_STEPS}", f"--{prefix}.eval_every_steps={SMOKE_STEPS}",
        f"--{prefix}.log_every_steps={SMOKE_STEPS}", f"--{prefix}.checkpoint_every_steps={SMOKE_STEPS}"]

  def call(self, name: str, args: List[str]) -> str:
    """Runs `python -m args` with the time left as its timeout; its stderr goes to OUT/<name>.log."""
    timeout = max(1.0, self.left_s())
    with open(os.path.join(self.out, f"{name}.log"), "a") as log:
      proc = subprocess.run([self.python, "-m", *args], stdout=subprocess.PIPE, stderr=log, text=True,
                            timeout=timeout, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"python -m {args[0]} exited {proc.returncode} (see {name}.log)")
    return proc.stdout

  def json_of(self, name: str, args: List[str]) -> Dict:
    lines = self.call(name, args).strip().splitlines()
    return json.loads(lines[-1])


def _speed(dtype: str) -> Callable[[Suite], Dict]:
  def run(suite: Suite) -> Dict:
    steps = SMOKE_STEPS if suite.smoke else 200
    record = suite.json_of(f"speed_{dtype}", [
        "benchmarks.speed", "--config=experiments/base.py", f"--steps={steps}", "--compare=torch",
        f"--config.dtype={dtype}", *suite.data_flags(), *suite.shrink("config")])
    keep = ("ms_per_step", "images_per_s", "compile_s", "eval_s", "peak_device_mem_mb", "torch_ms_per_step",
            "speedup_vs_torch", "torch_device", "torch_tf32", "backend", "device_kind")
    return {k: record[k] for k in keep if k in record}
  return run


def _time_to_accuracy(config: str, seeds: int, baseline: bool, resnet: bool) -> Callable[[Suite], Dict]:
  def run(suite: Suite) -> Dict:
    name = os.path.basename(config).split(".")[0].split(":")[0]
    args = ["benchmarks.time_to_accuracy", f"--config={config}", f"--seeds={2 if suite.smoke else seeds}",
            *suite.data_flags(), *suite.shrink("config", resnet)]
    if baseline:
      args += ["--baseline=experiments/base.py", *suite.data_flags("baseline"), *suite.shrink("baseline")]
    record = suite.json_of(name, args)
    keep = ("num_steps", "seeds", "accuracy_mean", "accuracy_std", "train_s_mean", "compile_s", "train_s_ratio",
            "process_s")
    return {**{k: record[k] for k in keep if k in record}, "device_kind": record["machine"]["device_kind"]}
  return run


_FINAL = re.compile(r"Final evaluation at step (\d+): accuracy ([\d.]+)")


def _base_runs(suite: Suite) -> Dict:
  """A whole base run, cold, then again in a fresh workdir with the compilation cache it filled."""
  out = {}
  for run in ("cold", "cached"):
    workdir = os.path.join(suite.work, f"base_{run}")
    start = time.monotonic()
    suite.call("base_run", ["fmnist_jax.main", "--config=experiments/base.py", f"--workdir={workdir}",
                            f"--config.runtime.compilation_cache_dir={os.path.join(suite.work, 'cache')}",
                            *suite.data_flags(), *suite.shrink("config")])
    out[f"{run}_process_s"] = round(time.monotonic() - start, 3)
  with open(os.path.join(suite.out, "base_run.log")) as f:
    final = _FINAL.findall(f.read())
  out["accuracy"] = float(final[-1][1]) if final else None
  return out


def _seeds16(suite: Suite) -> Dict:
  workdir = os.path.join(suite.work, "seeds16")
  start = time.monotonic()
  # Smoke mode: the 5 seeds of seeds.py (a CPU evaluates each member's 10,000 images), vmapped as on GPUs
  # (runtime.ACCELERATOR_VMAP_MEMBERS), not one by one as on CPUs.
  sweep = ["--sweep=experiments/sweeps/seeds.py", "--vmap_members=16"] if suite.smoke else [
      "--sweep=experiments/sweeps/seeds16.py"]
  suite.call("seeds16", ["fmnist_jax.sweep", "--config=experiments/base.py", *sweep, f"--workdir={workdir}",
                         *suite.data_flags(), *suite.shrink("config")])
  process_s = round(time.monotonic() - start, 3)
  with open(os.path.join(workdir, "results.csv")) as f:
    accuracies = [float(row["accuracy"]) for row in csv.DictReader(f)]
  return {"process_s": process_s, "points": len(accuracies),
          "accuracy_mean": round(sum(accuracies) / len(accuracies), 4)}


# In the order of their value: what the README's GPU rows and the speed comparison need first.
ITEMS = (
    Item("speed_fp32", "base model: ms per step beside PyTorch on the same GPU", 60, _speed("float32")),
    Item("best", "experiments/best.py (WRN-16-4, 40 epochs): test accuracy and training seconds", 240,
         _time_to_accuracy("experiments/best.py", 1, baseline=False, resnet=True)),
    Item("speedrun", "experiments/speedrun.py, 5 seeds: accuracy and time as a ratio to the base's", 150,
         _time_to_accuracy("experiments/speedrun.py", 5, baseline=True, resnet=False)),
    Item("base_run", "a whole base run as a user starts it: process seconds cold and with the cache", 90, _base_runs),
    Item("speed_bf16", "base model in bfloat16: ms per step beside PyTorch", 60, _speed("bfloat16")),
    Item("seeds16", "16 seeds of the base as one vmapped sweep: process seconds", 120, _seeds16),
)


def device_name(python: str) -> Dict:
  """The device the items run on, from a process of its own (this one keeps no GPU memory)."""
  code = ("import json, jax; d = jax.devices()[0]; print(json.dumps({'backend': jax.default_backend(), "
          "'device_kind': d.device_kind, 'num_devices': jax.device_count(), 'jax_version': jax.__version__}))")
  proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, check=False)
  if proc.returncode != 0:
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def run_suite(out: str, data: str, smoke: bool, budget_s: Optional[float] = None,
              only: Optional[List[str]] = None) -> Dict:
  """Runs the items that fit; writes and returns the summary."""
  os.makedirs(out, exist_ok=True)
  budget_s = budget_s if budget_s is not None else (SMOKE_BUDGET_S if smoke else FULL_BUDGET_S)
  suite = Suite(out, data, smoke, budget_s)
  summary = {"smoke": smoke, "budget_s": budget_s, "device": device_name(suite.python), "items": {},
             "ran": [], "skipped": [], "failed": []}
  for item in ITEMS:
    if only and item.name not in only:
      continue
    record = {"figures_of": item.figures, "estimate_s": item.estimate_s}
    left = suite.left_s()
    if not smoke and item.estimate_s > left:
      record.update(status="skipped", reason=f"estimate {item.estimate_s} s > {left:.0f} s left of BUDGET_S")
      summary["skipped"].append(item.name)
    else:
      start = time.monotonic()
      try:
        record.update(status="ok", figures=item.run(suite))
        summary["ran"].append(item.name)
      except subprocess.TimeoutExpired:
        record.update(status="timed_out", reason="ran past the end of BUDGET_S")
        summary["failed"].append(item.name)
      except (RuntimeError, OSError, ValueError, KeyError) as e:
        record.update(status="failed", reason=str(e)[:300])
        summary["failed"].append(item.name)
      record["seconds"] = round(time.monotonic() - start, 1)
    summary["items"][item.name] = record
    _write(out, summary)  # After every item: a killed suite keeps what it measured.
    print(f"gpu_suite: {item.name}: {record['status']} {record.get('reason', '')}", file=sys.stderr, flush=True)
  summary["total_s"] = round(time.monotonic() - suite.start, 1)
  _write(out, summary)
  return summary


def _write(out: str, summary: Dict) -> None:
  path = os.path.join(out, SUMMARY)
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(path + ".tmp", path)


def main() -> int:
  out, data = os.environ.get("OUT"), os.environ.get("FMNIST_DATA")
  if not out or not data:
    print("error: set OUT (the results folder) and FMNIST_DATA (a folder with the four Fashion-MNIST .gz "
          "files)", file=sys.stderr)
    return 2
  budget = os.environ.get("BUDGET_S")
  if budget is not None and not re.fullmatch(r"\d+(\.\d+)?", budget):
    print(f"error: BUDGET_S={budget} must be a number of seconds", file=sys.stderr)
    return 2
  only = [n for n in os.environ.get("ITEMS", "").split(",") if n]
  unknown = sorted(set(only) - {i.name for i in ITEMS})
  if unknown:
    print(f"error: ITEMS names {', '.join(unknown)}; known: {', '.join(i.name for i in ITEMS)}", file=sys.stderr)
    return 2
  summary = run_suite(out, data, os.environ.get("SMOKE", "0") not in ("", "0"),
                      float(budget) if budget is not None else None, only or None)
  return 1 if summary["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
