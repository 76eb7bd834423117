"""Training state, the pure train/eval steps, and the compiled chunks built from them.

Nothing here is jitted: `fmnist_jax.train` jits these functions where it calls them (with the
run's XLA options, donation and shardings) and `vmap`s them over members. What a config leaves
off (augmentation, label smoothing, BatchNorm, dropout, an EMA) is left out of the traced step.
"""

from typing import Any

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

import fmnist_jax
from fmnist_jax import augment
from fmnist_jax import inference
from fmnist_jax import input_pipeline
from fmnist_jax import metrics as metrics_lib
from fmnist_jax import models
from fmnist_jax import optimizers
from fmnist_jax import parallel
from fmnist_jax import whitening


class TrainState(train_state.TrainState):
  """Flax's TrainState plus model state: None (no leaves) where the config has none."""

  batch_stats: Any = None  # BatchNorm statistics (collection "batch_stats"), updated by train_step.
  ema_params: Any = None  # Exponential moving average of the parameters (config.ema_decay > 0).
  ema_batch_stats: Any = None  # The same average of the BatchNorm statistics, evaluated with ema_params.


# --- State and steps (pure; jitted where they are called) -------------------------------------


def derive_keys(seed: int) -> tuple:
  """(init_key, shuffle_key, step_key) of a run; one derivation, so vmapped members match single
  runs. A step's augmentation and dropout draw from fold_in(step_key, step)."""
  rng = jax.random.PRNGKey(seed)
  return jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1), jax.random.fold_in(rng, 2)


def stem_kernel(config, train_images):
  """The whitening stem's fixed filters from the uint8 training images (fmnist_jax/whitening.py), or
  None where the config has no stem."""
  m = config.model
  if not m.get("whiten_kernel_size"):
    return None
  return whitening.patch_whitening(train_images, m.whiten_kernel_size, m.whiten_eps, m.whiten_directions)


def abstract_stem_kernel(config):
  """stem_kernel's shape (jax.eval_shape of a state without the images), or None."""
  m = config.model
  if not m.get("whiten_kernel_size"):
    return None
  return jax.ShapeDtypeStruct(whitening.kernel_shape(m.whiten_kernel_size, fmnist_jax.IMAGE_SHAPE[-1],
                                                     m.whiten_directions), jnp.float32)


def init_variables(config, rng: jax.Array, stem=None) -> tuple:
  """(params, model state) of a fresh model: the state's fields are TrainState's beyond the
  parameters, None (an empty tree) where the config has none. A whitening stem's filters are
  `stem` (`stem_kernel(config, train_images)`; required then, unused otherwise)."""
  variables = models.create_model(config).init(rng, jnp.zeros((1,) + fmnist_jax.IMAGE_SHAPE, jnp.float32))
  params = variables["params"]
  if config.model.get("whiten_kernel_size"):
    if stem is None:
      raise ValueError("a whitening stem (config.model.whiten_kernel_size > 0) needs its filters: "
                       "steps.stem_kernel(config, train_images)")
    params = {**params, whitening.STEM: {**params[whitening.STEM], "kernel": jnp.asarray(stem)}}
  batch_stats = variables.get("batch_stats")  # None for a model without BatchNorm.
  ema_params, ema_batch_stats = jax.tree.map(jnp.copy, (params, batch_stats)) if config.ema_decay else (None, None)
  return params, {"batch_stats": batch_stats, "ema_params": ema_params, "ema_batch_stats": ema_batch_stats}


def create_train_state(config, rng: jax.Array, stem=None, runtime=None) -> TrainState:
  """Fresh parameters, model state and optimizer state (its schedule spans the run's steps);
  `stem` as for init_variables; `runtime` (a resolved fmnist_jax.runtime.Runtime) picks the
  layer arithmetic, default: resolved for JAX's default backend (initial values do not depend on it)."""
  params, model_state = init_variables(config, rng, stem)
  return TrainState.create(apply_fn=models.create_model(config, runtime).apply, params=params,
                           tx=optimizers.create(config, num_train_steps(config)), **model_state)


def with_config_hyperparams(state: TrainState, config) -> TrainState:
  """inject_hyperparams keeps the optimizer's hyperparameters in the state: a resumed run takes the config's."""
  hyperparams = {name: jax.device_put(jnp.asarray(config[name], value.dtype), value.sharding)
                 if name in config else value
                 for name, value in state.opt_state.hyperparams.items()}
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def _ema(ema_tree, tree, decay: float, step):
  """The bias-corrected average of `tree` after steps 1..step, weights decay**(step - i): the
  initial values carry no weight (the update at step 1 copies them)."""
  weight = (1 - decay) / (1 - decay ** step.astype(jnp.float32))
  return jax.tree.map(lambda e, p: e + weight * (p - e), ema_tree, tree)


def train_step(state: TrainState, batch, step_key, *, config, epoch=None) -> tuple:
  """One optimizer step on a batch {'image': float [B,28,28,1], 'label': int32 [B]} → (state, metrics).

  Augmentation and dropout draw from fold_in(step_key, state.step): a pure function of (seed, step).
  With config.augment.alternate_flip the batch also holds the images' dataset indices ('index'
  [B]) and `epoch` is the step's epoch: each image's mirroring depends on them and the seed.
  """
  images, labels = batch["image"], batch["label"]

  def key(purpose: int):  # Derived only where used: a step without randomness draws nothing.
    return jax.random.fold_in(jax.random.fold_in(step_key, state.step), purpose)

  if augment.enabled(config.augment):
    images = augment.apply(config.augment, key(0), images, jax.random.fold_in(step_key, augment.COIN_DATA),
                           batch.get("index"), epoch)
  has_stats = state.batch_stats is not None
  rngs = {"dropout": key(1)} if config.model.get("dropout_rate") else None

  def loss_fn(params):
    variables = {"params": params, **({"batch_stats": state.batch_stats} if has_stats else {})}
    if has_stats:
      logits, updates = state.apply_fn(variables, images, train=True, rngs=rngs, mutable=["batch_stats"])
    else:
      logits, updates = state.apply_fn(variables, images, train=True, rngs=rngs), {}
    if config.label_smoothing:
      targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), config.label_smoothing)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
    else:
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, **updates)
  if config.ema_decay:  # BatchNorm statistics are averaged too: they must match the averaged weights.
    ema_params, ema_batch_stats = _ema((state.ema_params, state.ema_batch_stats), (state.params, state.batch_stats),
                                       config.ema_decay, state.step)
    state = state.replace(ema_params=ema_params, ema_batch_stats=ema_batch_stats)
  return state, metrics_lib.TrainMetrics.single_from_model_output(
      loss=loss, logits=logits, labels=labels, grad_norm=optax.tree.norm(grads))


def eval_step(state: TrainState, batch, *, tta: inference.TTA = inference.TTA()) -> metrics_lib.EvalMetrics:
  """Metrics of a masked batch, without gradients, the logits averaged over the views of `tta`."""
  variables = inference.inference_variables(state.params, state.batch_stats, state.ema_params, state.ema_batch_stats)
  logits = inference.inference_logits(state.apply_fn, variables, batch["image"], tta)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return metrics_lib.EvalMetrics.single_from_model_output(
      loss=loss, logits=logits, labels=batch["label"], mask=batch["mask"])


# --- Compiled programs ------------------------------------------------------------------------


def train_steps(state, images, labels, perm, step_key, start_index, num_steps, *, config, mesh):
  """`num_steps` (traced) consecutive steps of one epoch, batches gathered on the device.

  The first step runs outside the loop so its metrics seed the accumulator; with num_steps=1 this
  is exactly one step, so fused and step-by-step training share one compiled program.
  """

  def one_step(state, index):
    batch = input_pipeline.gather_batch(images, labels, perm, index, config.batch_size)
    epoch = None
    if config.augment.alternate_flip:  # Each image's mirroring follows its dataset index and the epoch.
      batch["index"] = jax.lax.dynamic_slice_in_dim(perm, index * config.batch_size, config.batch_size)
      epoch = state.step // (images.shape[0] // config.batch_size)
    return train_step(state, parallel.shard_batch(mesh, batch), step_key, config=config, epoch=epoch)

  state, acc = one_step(state, start_index)

  def body(i, carry):
    state, acc = carry
    state, m = one_step(state, start_index + i)
    return state, acc.merge(m)

  return jax.lax.fori_loop(1, num_steps, body, (state, acc))


def evaluate_batches(state, batches, *, tta: inference.TTA, mesh):
  """EvalMetrics over all of `batches` [num_batches, B, ...] in one compiled call."""
  per_batch = jax.lax.map(lambda b: eval_step(
      state, parallel.shard_batch(mesh, input_pipeline.to_float_batch(b)), tta=tta), batches)
  return per_batch.reduce()


def num_train_steps(config) -> int:
  """config.num_train_steps, or num_epochs epochs of the training split (a partial batch is dropped)."""
  steps_per_epoch = fmnist_jax.SPLIT_SIZES["train"] // config.batch_size
  return config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
