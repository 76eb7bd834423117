#!/usr/bin/env bash
# The GPU measurements of the README, as one call that always returns figures within its time budget:
#   FMNIST_DATA=<folder with the four original .gz files> OUT=<results folder> benchmarks/gpu_suite.sh
# Items (benchmarks/gpu_suite.py, in the order of their value): the base step beside PyTorch,
# experiments/best.py, the speedrun's 5 seeds, a whole base run cold and cached, bfloat16, the 16-seed
# sweep. BUDGET_S (default 420 s) bounds the whole suite: an item that no longer fits is skipped, one
# that runs past the budget is stopped. OUT/summary.json holds every figure with its device, and which
# items ran; scripts/fill_gpu_rows.py OUT/summary.json writes the README's GPU rows from it.
# SMOKE=1: a few steps of tiny models per item, end to end on any device (tests/test_gpu_suite.py runs
# it on the CPU). ITEMS=a,b runs only those. Runs without TensorFlow (data read from the IDX files);
# where clu or ml_collections are missing (the lent GPU machines), install their wheels first:
#   pip install --no-deps --target=.deps <wheels>/*.whl && export PYTHONPATH=$PWD:$PWD/.deps
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m benchmarks.gpu_suite
