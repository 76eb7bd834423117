"""Learning rates of the base config: one vmapped program, the rate lives in the optimizer state.

  python -m fmnist_jax.sweep --config=experiments/base.py --sweep=experiments/sweeps/lr.py --workdir=runs/lr

Expected: one row per rate in runs/lr/results.md; no record is kept for this sweep.
"""


def get_sweep():
  return [{"learning_rate": lr} for lr in (1e-4, 3e-4, 1e-3, 3e-3)]
