"""Sixteen seeds of the base config: the sweep whose cost docs/records.md reports (vmapped vs one by one).

  python -m fmnist_jax.sweep --config=experiments/base.py --sweep=experiments/sweeps/seeds16.py --workdir=runs/seeds16
  python -m benchmarks.sweep_cost --config=experiments/base.py --num_seeds=16 --vmap_members=16   # its cost

Expected: its cost as in docs/records.md ("Sweep cost"); the 16 runs' accuracies are not recorded.
"""


def get_sweep():
  return [{"seed": seed} for seed in range(16)]
