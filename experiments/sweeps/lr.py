"""Learning rates of the base config: one vmapped program, the rate lives in the optimizer state."""


def get_sweep():
  return [{"learning_rate": lr} for lr in (1e-4, 3e-4, 1e-3, 3e-3)]
