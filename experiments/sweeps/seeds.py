"""Five seeds of the base config: its run-to-run spread (vmapped together on GPU/TPU, one by one on the CPU).

  python -m fmnist_jax.sweep --config=experiments/base.py --sweep=experiments/sweeps/seeds.py --workdir=runs/seeds

Expected: final test accuracy 0.8975 ± 0.0105 (seeds 0-4 on the CPU); record docs/figures/seeds/final.csv,
table in docs/records.md ("The seed over five seeds").
"""


def get_sweep():
  return [{"seed": seed} for seed in range(5)]
