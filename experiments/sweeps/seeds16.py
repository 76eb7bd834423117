"""Sixteen seeds of the base config: the sweep whose cost the README reports (vmapped vs one by one)."""


def get_sweep():
  return [{"seed": seed} for seed in range(16)]
