"""Five seeds of the base config: its run-to-run spread (vmapped together on GPU/TPU, one by one on the CPU)."""


def get_sweep():
  return [{"seed": seed} for seed in range(5)]
