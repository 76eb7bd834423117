"""Writes the README's GPU rows of the results table from a benchmarks/gpu_suite.sh summary.json:

  python scripts/fill_gpu_rows.py OUT/summary.json [--record=docs/records/gpu_summary.json]
  python scripts/fill_gpu_rows.py --unmeasured        # the rows as they read before any GPU run

The rows are the README results table's lines that begin with the marker `| <!--gpu-->` (an inline
comment, so the table stays one table); no figure there is typed by hand. `--record`
copies the summary into the repository and links the rows to it. A smoke summary (SMOKE=1) or one
measured on a CPU is refused unless --allow_smoke (the tests use it).
"""

import argparse
import json
import os
import shutil
import sys
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "| <!--gpu--> "  # Begins every GPU row of the README's results table.
UNMEASURED = "unmeasured: not yet run on a GPU"
CPU_LOG = "[2 of 40 epochs on a CPU](docs/records/best_gpu_config_cpu_2_epochs.log)"


def _figures(summary: Optional[Dict], item: str) -> Optional[Dict]:
  record = (summary or {}).get("items", {}).get(item, {})
  return record.get("figures") if record.get("status") == "ok" else None


def _not_run(summary: Optional[Dict], item: str) -> str:
  if summary is None:
    return UNMEASURED
  record = summary.get("items", {}).get(item, {})
  return f"unmeasured: {record.get('status', 'not in the suite')} in the last GPU run"


def rows(summary: Optional[Dict], record_link: Optional[str]) -> List[str]:
  """The GPU rows (config | seeds | test accuracy | training time | record) of `summary` (None: unmeasured)."""
  device = (summary or {}).get("device", {}).get("device_kind", "?")
  link = f"[summary.json]({record_link})" if record_link else "summary.json"
  out = []
  best = _figures(summary, "best")
  out.append("| `experiments/best.py` (WRN-16-4, 40 epochs, one GPU) | "
             + (f"{best['seeds'][0]} | {best['accuracy_mean']:.4f} | {best['train_s_mean']:.0f} s on {device} | "
                f"{link} |"
                if best else f"— | {_not_run(summary, 'best')} | — | {CPU_LOG} |"))
  speedrun = _figures(summary, "speedrun")
  out.append("| `experiments/speedrun.py` on one GPU | "
             + (f"{speedrun['seeds'][0]}–{speedrun['seeds'][-1]} | {speedrun['accuracy_mean']:.4f} ± "
                f"{speedrun['accuracy_std']:.4f} | {speedrun['train_s_ratio']:.3f} × the base's on {device} | {link} |"
                if speedrun else f"— | {_not_run(summary, 'speedrun')} | — | — |"))
  base, speed = _figures(summary, "base_run"), _figures(summary, "speed_fp32")
  if base:
    step = (f", {speed['ms_per_step']:.2f} ms a step ({speed.get('speedup_vs_torch', float('nan')):.2f}× "
            "PyTorch's)" if speed else "")
    out.append(f"| `experiments/base.py` (the seed) on one GPU | 0 | {base['accuracy']:.4f} | "
               f"{base['cold_process_s']:.0f} s a whole run ({base['cached_process_s']:.0f} s with the "
               f"compilation cache){step} on {device} | {link} |")
  else:
    out.append(f"| `experiments/base.py` (the seed) on one GPU | — | {_not_run(summary, 'base_run')} | — | — |")
  return out


def fill(text: str, new_rows: List[str]) -> str:
  """`text` (the README) with its marked GPU rows replaced by `new_rows`."""
  lines = text.split("\n")
  marked = [i for i, line in enumerate(lines) if line.startswith(MARK)]
  if not marked or marked != list(range(marked[0], marked[-1] + 1)):
    raise ValueError(f"its results table must end in GPU rows, each beginning with {MARK.strip()!r}")
  return "\n".join(lines[:marked[0]] + [MARK + row[2:] for row in new_rows] + lines[marked[-1] + 1:])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("summary", nargs="?", help="summary.json written by benchmarks/gpu_suite.sh")
  parser.add_argument("--unmeasured", action="store_true", help="write the rows as unmeasured")
  parser.add_argument("--readme", default=os.path.join(REPO, "README.md"))
  parser.add_argument("--record", help="copy the summary to this path in the repository and link the rows to it")
  parser.add_argument("--allow_smoke", action="store_true", help="accept a SMOKE=1 or CPU summary (tests)")
  args = parser.parse_args(argv)
  if bool(args.summary) == args.unmeasured:
    parser.error("give a summary.json or --unmeasured, not both")
  summary = None
  if args.summary:
    try:
      with open(args.summary) as f:
        summary = json.load(f)
    except (OSError, ValueError) as e:
      print(f"error: {args.summary}: cannot read it as JSON ({e}); give the summary.json of gpu_suite.sh",
            file=sys.stderr)
      return 2
    if not args.allow_smoke and (summary.get("smoke") or summary.get("device", {}).get("backend") != "gpu"):
      print(f"error: {args.summary} is a smoke run or was not measured on a GPU "
            f"({summary.get('device', {}).get('device_kind')}); run benchmarks/gpu_suite.sh on a GPU without SMOKE",
            file=sys.stderr)
      return 2
  link = None
  if args.record and summary is not None:
    os.makedirs(os.path.dirname(os.path.abspath(args.record)), exist_ok=True)
    shutil.copyfile(args.summary, args.record)
    link = os.path.relpath(os.path.abspath(args.record), os.path.dirname(os.path.abspath(args.readme)))
  with open(args.readme) as f:
    text = f.read()
  try:
    text = fill(text, rows(summary, link))
  except ValueError as e:
    print(f"error: {args.readme}: {e}", file=sys.stderr)
    return 2
  with open(args.readme, "w") as f:
    f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
