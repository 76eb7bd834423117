"""Training state, the pure train/eval steps, and the compiled chunks built from them.

Nothing here is jitted: `fmnist_jax.loop` jits these functions where it calls them (with the
run's XLA options, donation and shardings) and `vmap`s them over members.
"""

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from fmnist_jax import input_pipeline
from fmnist_jax import metrics as metrics_lib
from fmnist_jax import models
from fmnist_jax import parallel

TrainState = train_state.TrainState


# --- State and steps (pure; jitted where they are called) -------------------------------------


def create_optimizer(config) -> optax.GradientTransformation:
  """Adam with its hyperparameters in the state, so changing them needs no recompilation."""
  return optax.inject_hyperparams(optax.adam)(
      learning_rate=config.learning_rate, b1=config.b1, b2=config.b2, eps=config.eps)


def derive_keys(seed: int) -> tuple:
  """(init_key, shuffle_key) of a run; one derivation, so vmapped members match single runs."""
  rng = jax.random.PRNGKey(seed)
  return jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)


def create_train_state(config, rng: jax.Array, runtime=None) -> TrainState:
  """Fresh parameters and optimizer state; `runtime` (a resolved fmnist_jax.runtime.Runtime) picks
  the layer arithmetic, default: resolved for JAX's default backend."""
  model = models.create_model(config, runtime)
  params = model.init(rng, jnp.zeros((1,) + input_pipeline.IMAGE_SHAPE, jnp.float32))["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=create_optimizer(config))


def with_config_hyperparams(state: TrainState, config) -> TrainState:
  """inject_hyperparams keeps Adam's hyperparameters in the state: a resumed run takes the config's."""
  hyperparams = {name: jax.device_put(jnp.asarray(config[name], value.dtype), value.sharding)
                 if name in config else value
                 for name, value in state.opt_state.hyperparams.items()}
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def train_step(state: TrainState, batch) -> tuple:
  """One Adam step on a batch {'image': float [B,28,28,1], 'label': int32 [B]} → (state, metrics)."""

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads)
  return state, metrics_lib.TrainMetrics.single_from_model_output(
      loss=loss, logits=logits, labels=batch["label"], grad_norm=optax.tree.norm(grads))


def eval_step(state: TrainState, batch) -> metrics_lib.EvalMetrics:
  """Metrics of a masked batch, without gradients."""
  logits = state.apply_fn({"params": state.params}, batch["image"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  return metrics_lib.EvalMetrics.single_from_model_output(
      loss=loss, logits=logits, labels=batch["label"], mask=batch["mask"])


# --- Compiled programs ------------------------------------------------------------------------


def train_steps(state, images, labels, perm, start_index, num_steps, *, batch_size, mesh):
  """`num_steps` (traced) consecutive steps of one epoch, batches gathered on the device.

  The first step runs outside the loop so its metrics seed the accumulator; with num_steps=1 this
  is exactly one step, so fused and step-by-step training share one compiled program.
  """

  def one_step(state, index):
    batch = input_pipeline.gather_batch(images, labels, perm, index, batch_size)
    return train_step(state, parallel.shard_batch(mesh, batch))

  state, acc = one_step(state, start_index)

  def body(i, carry):
    state, acc = carry
    state, m = one_step(state, start_index + i)
    return state, acc.merge(m)

  return jax.lax.fori_loop(1, num_steps, body, (state, acc))


def evaluate_batches(state, batches, *, mesh):
  """EvalMetrics over all of `batches` [num_batches, B, ...] in one compiled call."""
  per_batch = jax.lax.map(
      lambda b: eval_step(state, parallel.shard_batch(mesh, input_pipeline.to_float_batch(b))), batches)
  return per_batch.reduce()


def num_train_steps(config, num_train_examples: int) -> int:
  steps_per_epoch = num_train_examples // config.batch_size
  return config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
