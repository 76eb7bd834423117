"""Five seeds of the base config: its run-to-run spread (trained together, vmapped)."""


def get_sweep():
  return [{"seed": seed} for seed in range(5)]
