"""Training state, pure train/eval steps, and the resumable train-and-evaluate loop."""

import functools
import importlib.util
import json
import os
import time
from typing import Any, Dict, Optional

from absl import logging
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from fmnist_jax import checkpoints
from fmnist_jax import errors
from fmnist_jax import input_pipeline
from fmnist_jax import metrics as metrics_lib
from fmnist_jax import models
from fmnist_jax import parallel
from fmnist_jax import preemption
from fmnist_jax import validation
from fmnist_jax import writers

CONFIG_FILE = "config.json"

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


def create_train_state(config, rng: jax.Array) -> TrainState:
  model = models.create_model(config)
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


# --- The loop ---------------------------------------------------------------------------------


def num_train_steps(config, num_train_examples: int) -> int:
  steps_per_epoch = num_train_examples // config.batch_size
  return config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch


def compiler_options(config) -> Optional[Dict[str, str]]:
  """XLA options for the compiled programs: on the CPU, the ops that YNNPACK runs (the rest use Eigen's kernels)."""
  if jax.default_backend() != "cpu" or config.cpu_ynn_fusions is None:
    return None  # jaxlib's own choice.
  fusions = validation.cpu_ynn_fusions(config)
  return {"xla_cpu_experimental_ynn_fusion_type": ",".join(f"LIBRARY_FUSION_TYPE_{f.upper()}" for f in fusions)}


def resolve_fuse(config) -> bool:
  """Measured: the fused loop is ~5x faster per step on GPU, ~30x slower on this kind of CPU."""
  if config.fuse_steps == "auto":
    return jax.default_backend() != "cpu"
  return config.fuse_steps == "on"


def next_boundary(step: int, num_steps: int, steps_per_epoch: int, config) -> int:
  """The next step at which the host must act: log, eval, checkpoint, epoch end, or the end."""
  candidates = [num_steps, (step // steps_per_epoch + 1) * steps_per_epoch]
  for every in (config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps):
    candidates.append((step // every + 1) * every)
  return min(candidates)


def format_eta(seconds: float) -> str:
  minutes, secs = divmod(int(seconds), 60)
  return f"{minutes}m{secs:02d}s"


def save_config(config, workdir: str) -> None:
  """Writes a temporary file and renames it: a kill mid-write cannot leave a truncated config."""
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)


BASE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "base.py")


def _merged(defaults: Dict[str, Any], saved: Dict[str, Any]) -> Dict[str, Any]:
  """`saved` over `defaults`, nested dicts merged key by key."""
  out = dict(defaults)
  for key, value in saved.items():
    out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
  return out


def default_config() -> ml_collections.ConfigDict:
  """experiments/base.py, the one place every field's default lives."""
  spec = importlib.util.spec_from_file_location("fmnist_jax_base_config", BASE_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's saved config; fields added to the project after the run was saved take base.py's defaults."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError as e:
    raise errors.CheckpointError(f"{path} not found; --workdir must be a folder written by training") from e
  except (OSError, ValueError) as e:
    raise errors.CheckpointError(f"{path} is unreadable ({e}); restore it from the run's config") from e
  if not isinstance(saved, dict):
    raise errors.CheckpointError(f"{path} is not a config (a JSON object expected); restore it from the run's config")
  defaults = json.loads(default_config().to_json_best_effort())
  return ml_collections.ConfigDict(_merged(defaults, saved))


def _check_same_model(config, workdir: str) -> None:
  """A workdir trained with other model shapes cannot resume under this config."""
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    return
  saved = load_config(workdir).model.to_dict()
  current = json.loads(config.model.to_json_best_effort())
  if saved != current:
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    raise errors.CheckpointError(
        f"{workdir} was trained with a different model ({', '.join(f'model.{k}={saved.get(k)}' for k in diff)}); "
        "use that config or a new --workdir")


class Trainer:
  """Owns the device data, compiled programs, writers and checkpoints of one run."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = workdir
    self.mesh = parallel.make_mesh()
    data = input_pipeline.load_dataset(config.data)
    train = data["train"]
    self.num_train = len(train.labels)
    self.steps_per_epoch = self.num_train // config.batch_size
    self.num_steps = num_train_steps(config, self.num_train)
    self.train_images, self.train_labels = parallel.put_replicated(self.mesh, (train.images, train.labels))
    self.test_batches = parallel.put_replicated(
        self.mesh, input_pipeline.padded_batches(data["test"], config.eval_batch_size))
    self.fused = resolve_fuse(config)
    self._perm = (None, None)  # (epoch, its permutation): computed once per epoch.
    self.init_key, self.shuffle_key = derive_keys(config.seed)
    mesh, batch_size = self.mesh, config.batch_size
    jit = functools.partial(jax.jit, compiler_options=compiler_options(config))
    self._init = jit(functools.partial(create_train_state, config), out_shardings=parallel.replicated(mesh))
    self._train_steps = jit(
        functools.partial(train_steps, batch_size=batch_size, mesh=mesh), donate_argnums=0)
    self._permutation = jit(input_pipeline.epoch_permutation, static_argnums=2)
    self._evaluate = jit(functools.partial(evaluate_batches, mesh=mesh))
    self._eval_step = jit(lambda state, b: eval_step(state, parallel.shard_batch(
        mesh, input_pipeline.to_float_batch(b))))

  def initial_state(self) -> TrainState:
    return self._init(self.init_key)

  def abstract_state(self) -> TrainState:
    return jax.eval_shape(self._init, self.init_key)

  def evaluate(self, state) -> Dict[str, float]:
    if self.fused:
      result = self._evaluate(state, self.test_batches)
    else:  # On the CPU a Python loop over jitted batches beats lax.map.
      num_batches = self.test_batches["label"].shape[0]
      result = None
      for i in range(num_batches):
        m = self._eval_step(state, jax.tree.map(lambda x: x[i], self.test_batches))
        result = m if result is None else result.merge(m)
    return metrics_lib.scalars(result)

  def run_steps(self, state, step: int, end: int):
    """Trains steps [step, end) (within one epoch) and returns (state, accumulated metrics)."""
    epoch, index = divmod(step, self.steps_per_epoch)
    if self._perm[0] != epoch:
      self._perm = (epoch, self._permutation(self.shuffle_key, epoch, self.num_train))
    return run_chunk(self._train_steps, state, self.train_images, self.train_labels, self._perm[1], index,
                     end - step, self.fused)


def run_chunk(program, state, images, labels, perm, index: int, num_steps: int, fused: bool):
  """`num_steps` steps from batch `index`: one call of `program` when fused, else one call per step."""
  if fused:
    return program(state, images, labels, perm, index, num_steps)
  acc = None
  for i in range(index, index + num_steps):
    state, m = program(state, images, labels, perm, i, 1)
    acc = m if acc is None else acc.merge(m)
  return state, acc


def prepare(config, workdir: str) -> str:
  """Checks `config` and `workdir` before any work starts; returns the absolute workdir."""
  validation.validate(config, jax.device_count())
  workdir = os.path.abspath(workdir)
  validation.check_workdir(workdir)
  _check_same_model(config, workdir)
  use_compilation_cache(config)
  return workdir


def use_compilation_cache(config) -> None:
  """config.compilation_cache_dir: every program is written and read there, even ones that compile fast.

  JAX by default stores only programs that took over a second to compile; a cached run wants the
  evaluation and initialisation programs too.
  """
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(config.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Trains (or resumes) `config` in `workdir`; returns the final evaluation metrics."""
  workdir = prepare(config, workdir)
  trainer = Trainer(config, workdir)
  is_chief = jax.process_index() == 0
  ckpt = checkpoints.Checkpointer(workdir, max_to_keep=config.max_checkpoints_to_keep)
  train_writer = writers.create_writer(os.path.join(workdir, "train"), enabled=is_chief)
  eval_writer = writers.create_writer(os.path.join(workdir, "eval"), enabled=is_chief)
  try:
    restored_step, state = ckpt.restore_latest(trainer.abstract_state())
    if state is None:
      logging.info("No checkpoint in %s: training starts from scratch", ckpt.directory)
      state = trainer.initial_state()
      train_writer.write_hparams(writers.flatten_hparams(config))
    else:
      logging.info("Resuming from step %d", restored_step)
      state = with_config_hyperparams(state, config)
    if is_chief:
      save_config(config, workdir)
    return _loop(config, trainer, state, ckpt, train_writer, eval_writer)
  finally:
    for w in (train_writer, eval_writer):
      w.flush()
      w.close()
    ckpt.close()


def _loop(config, trainer: Trainer, state, ckpt, train_writer, eval_writer) -> Dict[str, float]:
  num_steps = trainer.num_steps
  step = int(state.step)
  if step >= num_steps:
    logging.info("Training already finished at step %d: evaluating only", step)
    final = trainer.evaluate(state)
    logging.info("Final evaluation at step %d: %s", step, _fmt(final))
    return final
  logging.info("Training %d steps (%d per epoch, batch %d, %s) on %d %s device(s)", num_steps,
               trainer.steps_per_epoch, config.batch_size, "fused" if trainer.fused else "step by step",
               jax.device_count(), jax.default_backend())
  acc, window_start, window_time = None, step, time.perf_counter()
  last_saved = ckpt.steps()[0] if ckpt.steps() else None
  final = None
  with preemption.stop_on_signals() as stop:
    while step < num_steps:
      # Step by step, one step per iteration, so a signal stops training after the current step.
      end = next_boundary(step, num_steps, trainer.steps_per_epoch, config) if trainer.fused else step + 1
      state, chunk = trainer.run_steps(state, step, end)
      acc = chunk if acc is None else acc.merge(chunk)
      step = end
      last = step == num_steps
      if step % config.log_every_steps == 0 or last:
        _check_finite(config, acc, window_start, step, last_saved, ckpt)
        now = time.perf_counter()
        rate = (step - window_start) / (now - window_time)
        values = metrics_lib.scalars(acc)
        train_writer.write_scalars(step, {**values, "steps_per_sec": rate})
        logging.info("step %d/%d | loss %.4f | accuracy %.4f | %.1f steps/s | ETA %s", step, num_steps,
                     values["loss"], values["accuracy"], rate, format_eta((num_steps - step) / rate))
        acc, window_start, window_time = None, step, time.perf_counter()
      if step % config.eval_every_steps == 0 or last:
        final = trainer.evaluate(state)
        eval_writer.write_scalars(step, final)
        logging.info("eval at step %d: %s", step, _fmt(final))
      if step % config.checkpoint_every_steps == 0 or last or stop:
        if acc is not None:
          _check_finite(config, acc, window_start, step, last_saved, ckpt)
        ckpt.save(step, state)
        last_saved = step
      if stop and not last:
        ckpt.wait()
        train_writer.flush()
        eval_writer.flush()
        raise errors.Interrupted(f"stopped by {stop.signal_name} at step {step}; checkpoint saved in "
                                 f"{ckpt.directory}; run the same command to resume")
  logging.info("Final evaluation at step %d: %s", step, _fmt(final))
  return final


def non_finite_message(window_start: int, step: int, last_saved: Optional[int], ckpt_dir: str) -> str:
  """What the NaN guard reports, for a single run and a vmapped member alike."""
  where = f"step {last_saved} in {ckpt_dir} (kept)" if last_saved is not None else "none yet"
  return (f"loss or gradients became NaN/Inf between steps {window_start} and {step}; last good checkpoint: "
          f"{where}. Lower learning_rate, or set halt_on_nan=False to continue anyway")


def _check_finite(config, acc, window_start: int, step: int, last_saved, ckpt) -> None:
  if config.halt_on_nan and not bool(jax.device_get(acc.all_finite.compute())):
    raise errors.NonFiniteLossError(non_finite_message(window_start, step, last_saved, ckpt.directory))


def _fmt(values: Dict[str, Any]) -> str:
  return ", ".join(f"{k} {v:.4f}" for k, v in values.items())
