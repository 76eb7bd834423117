#!/usr/bin/env bash
# The GPU measurements of the README, as one script: benchmark fp32 and bf16 beside PyTorch, a whole
# base run cold and with the compilation cache, the 16-seed sweep, and the record configs. Each writes
# its JSON (or log) under $OUT.
#   FMNIST_DATA=<folder with the four original .gz files> OUT=<results folder> benchmarks/gpu_suite.sh
# Runs without TensorFlow (data read from the IDX files).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${FMNIST_DATA:?set FMNIST_DATA to a folder holding the four Fashion-MNIST .gz files}"
: "${OUT:?set OUT to the folder for the results}"
PY="${PYTHON:-python3}"
DATA=(--config.data.source=idx "--config.data.idx_dirs=('$FMNIST_DATA',)")
BASELINE_DATA=(--baseline.data.source=idx "--baseline.data.idx_dirs=('$FMNIST_DATA',)")
WORK="$(mktemp -d)"
since() { "$PY" -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 3))" "$1"; }  # Seconds since $1.
mkdir -p "$OUT"
"$PY" -m benchmarks.speed --config=experiments/base.py --steps=200 --compare=torch "${DATA[@]}" > "$OUT/speed_fp32.json"
"$PY" -m benchmarks.speed --config=experiments/base.py --steps=200 --compare=torch --config.dtype=bfloat16 \
  "${DATA[@]}" > "$OUT/speed_bf16.json"
for run in cold cached; do
  start=$(date +%s.%N)
  "$PY" -m fmnist_jax.main --config=experiments/base.py --workdir="$WORK/base_$run" "${DATA[@]}" \
    --config.runtime.compilation_cache_dir="$WORK/cache" > "$OUT/base_$run.log" 2>&1
  echo "{\"run\": \"$run\", \"process_s\": $(since "$start")}" > "$OUT/base_$run.json"
done
start=$(date +%s.%N)
"$PY" -m fmnist_jax.sweep --config=experiments/base.py --sweep=experiments/sweeps/seeds16.py \
  --workdir="$WORK/seeds16" "${DATA[@]}" > "$OUT/seeds16.log" 2>&1
echo "{\"sweep\": \"seeds16\", \"process_s\": $(since "$start")}" > "$OUT/seeds16.json"
cp "$WORK/seeds16/results.csv" "$OUT/seeds16_results.csv"
"$PY" -m benchmarks.time_to_accuracy --config=experiments/speedrun.py --seeds=5 --baseline=experiments/base.py \
  "${DATA[@]}" "${BASELINE_DATA[@]}" > "$OUT/speedrun.json"
"$PY" -m benchmarks.time_to_accuracy --config=experiments/best.py --seeds=1 "${DATA[@]}" > "$OUT/best.json"
