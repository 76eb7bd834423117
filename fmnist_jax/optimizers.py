"""Optimizers and learning-rate schedules from optax, selected by the config.

The peak learning rate (and the optimizer's other numeric hyperparameters) live in the optimizer
state through `optax.inject_hyperparams`, so members that differ only in them share one compiled
program (which fields: config_checks.OPTIMIZER_HYPERPARAMS); a schedule is a fixed multiplier of
that peak (`scale_by_schedule`), part of the program.
The base config (Adam, constant rate, no clipping or decay) is exactly
`inject_hyperparams(optax.adam)`, the state that checkpoints of the seed hold.
"""

import jax
import jax.numpy as jnp
import optax

from fmnist_jax import config_checks
from fmnist_jax import whitening


def _cosine(start: float, end: float, steps: int):
  """start → end along half a cosine over `steps`, then end."""
  def schedule(count):
    progress = jnp.minimum(count / max(steps, 1), 1.0)
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  return schedule


def schedule_factor(config, num_steps: int):
  """The multiplier of the peak rate at each update (count 0 = the first step), or None for "constant".

  The warmup rises from `lr_start_factor` to 1 over `warmup_fraction` of the steps (linearly, or
  along a cosine for "one_cycle"), then the rate decays to `lr_end_factor` at the last step
  (cosine for "warmup_cosine" and "one_cycle", linear for "warmup_linear").
  """
  if config.schedule == "constant":
    return None
  warmup = int(round(config.warmup_fraction * num_steps))
  decay = max(num_steps - warmup, 1)
  start, end = config.lr_start_factor, config.lr_end_factor
  # A warmup that rounds to 0 steps is never used (join_schedules starts at `fall`); optax would warn.
  linear_rise = optax.linear_schedule(start, 1.0, warmup) if warmup > 0 else optax.constant_schedule(start)
  if config.schedule == "warmup_cosine":
    rise, fall = linear_rise, _cosine(1.0, end, decay)
  elif config.schedule == "warmup_linear":
    rise, fall = linear_rise, optax.linear_schedule(1.0, end, decay)
  else:  # one_cycle
    rise, fall = _cosine(start, 1.0, warmup), _cosine(1.0, end, decay)
  return optax.join_schedules([rise, fall], [warmup])


def _trained_kernel(path, p) -> bool:
  """A kernel (rank > 1) other than a whitening stem's fixed filters."""
  return p.ndim > 1 and not any(getattr(k, "key", None) == whitening.STEM for k in path)


def _decay_mask(params):
  """Weight decay applies to trained kernels, not to biases, BatchNorm scales and offsets, or fixed filters."""
  return jax.tree_util.tree_map_with_path(_trained_kernel, params)


def _muon_dimension_numbers(params):
  """Muon orthogonalizes each trained kernel as a [fan_in, fan_out] matrix (a conv kernel [h, w, in,
  out] as [h * w * in, out]); the other parameters (None: biases, BatchNorm scales and offsets, fixed
  filters, whose gradient is zero) go to Adam, without weight decay."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: optax.contrib.MuonDimensionNumbers(tuple(range(p.ndim - 1)), p.ndim - 1)
      if _trained_kernel(path, p) else None, params)


def create(config, num_steps: int) -> optax.GradientTransformation:
  """The config's optimizer for a run of `num_steps` steps."""
  factor = schedule_factor(config, num_steps)
  clip = config.grad_clip_norm
  if config.optimizer == "adam" and factor is None and not clip:
    return optax.inject_hyperparams(optax.adam)(
        learning_rate=config.learning_rate, b1=config.b1, b2=config.b2, eps=config.eps)

  schedule = [] if factor is None else [optax.scale_by_schedule(factor)]

  def tail(learning_rate):
    """Scaling by the peak rate (in the state), then by the schedule (in the program)."""
    return [optax.scale_by_learning_rate(learning_rate), *schedule]

  head = [optax.clip_by_global_norm(clip)] if clip else []
  if config.optimizer == "muon":
    def muon(learning_rate, adam_learning_rate, momentum, b1, b2, eps, weight_decay):
      """optax's Muon scales by both peak rates itself; the schedule follows."""
      return optax.chain(*head, optax.contrib.muon(
          learning_rate, beta=momentum, eps=eps, weight_decay=weight_decay, weight_decay_mask=_decay_mask,
          adam_b1=b1, adam_b2=b2,
          adam_learning_rate=adam_learning_rate, muon_weight_dimension_numbers=_muon_dimension_numbers), *schedule)
    factory = muon
  elif config.optimizer == "sgd":
    def sgd(learning_rate, momentum, weight_decay):
      return optax.chain(*head, optax.add_decayed_weights(weight_decay, _decay_mask),
                         optax.trace(decay=momentum, nesterov=config.nesterov), *tail(learning_rate))
    factory = sgd
  elif config.optimizer == "adamw":
    def adamw(learning_rate, b1, b2, eps, weight_decay):
      return optax.chain(*head, optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                         optax.add_decayed_weights(weight_decay, _decay_mask), *tail(learning_rate))
    factory = adamw
  else:
    def adam(learning_rate, b1, b2, eps):
      return optax.chain(*head, optax.scale_by_adam(b1=b1, b2=b2, eps=eps), *tail(learning_rate))
    factory = adam
  hyperparams = config_checks.OPTIMIZER_HYPERPARAMS[config.optimizer]  # The factory's arguments, in its state.
  return optax.inject_hyperparams(factory)(**{name: config[name] for name in hyperparams})
