"""Every config in experiments/ loads, passes the config checks and builds its model."""

import importlib

import jax
import jax.numpy as jnp
import pytest

import fmnist_jax
from fmnist_jax import config_checks
from fmnist_jax import models

CONFIGS = [("base", ()), ("speedrun", ()), ("speedrun", ("conv3",)), ("speedrun", ("short",)), ("best", ()),
           ("best", ("cpu",)), ("resnet_smoke", ())]


@pytest.mark.parametrize("name,args", CONFIGS)
def test_experiment_config_is_valid_and_builds_its_model(name, args):
  config = importlib.import_module(f"fmnist_jax.experiments.{name}").get_config(*args)
  config_checks.validate(config, 1)
  variables = jax.eval_shape(lambda: models.create_model(config).init(
      jax.random.PRNGKey(0), jnp.zeros((1,) + fmnist_jax.IMAGE_SHAPE)))
  assert ("batch_stats" in variables) == bool(config.model.get("batch_norm"))


def test_recipes_keep_the_seeds_data_and_execution_settings():
  base = importlib.import_module("fmnist_jax.experiments.base").get_config()
  speedrun = importlib.import_module("fmnist_jax.experiments.speedrun").get_config()
  assert speedrun.runtime.to_dict() == base.runtime.to_dict()  # Recipes never change how a run executes.
  assert speedrun.data.to_dict() == base.data.to_dict() and speedrun.dtype == base.dtype


def test_best_refuses_an_unknown_size():
  with pytest.raises(ValueError, match="gpu' or 'cpu"):
    importlib.import_module("fmnist_jax.experiments.best").get_config("tpu")


def _differences(a, b) -> dict:
  """{dotted field: (a's, b's)} where two configs differ."""
  from fmnist_jax import run_folder  # pylint: disable=g-import-not-at-top
  a, b = dict(run_folder.flat(a.to_dict())), dict(run_folder.flat(b.to_dict()))
  return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def test_speedrun_variants_differ_only_in_their_recipes():
  speedrun = importlib.import_module("fmnist_jax.experiments.speedrun")
  short, conv3, record = speedrun.get_config("short"), speedrun.get_config("conv3"), speedrun.get_config()
  assert _differences(short, conv3) == {
      "num_epochs": (3, 8), "augment.translate_pixels": (0, 2), "eval_tta_shift_pixels": (0, 1)}
  assert _differences(conv3, record) == {
      "model.whiten_kernel_size": (0, 2), "model.convs_per_stage": (1, 2), "batch_size": (128, 1000),
      "learning_rate": (0.03, 0.1), "adam_learning_rate": (0.003, 0.01), "eval_every_steps": (468, 60),
      "log_every_steps": (117, 15), "checkpoint_every_steps": (468, 60), "eval_tta_shift_pixels": (1, 2),
      "model.activation": ("relu", "gelu")}
  assert (short.learning_rate, short.augment.flip, short.eval_flip_tta) == (0.03, True, True)
  with pytest.raises(ValueError, match="'94' \\(default\\), 'conv3' or 'short'"):
    speedrun.get_config("long")
