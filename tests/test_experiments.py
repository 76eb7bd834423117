"""Every config in experiments/ loads, passes the config checks and builds its model."""

import importlib

import jax
import jax.numpy as jnp
import pytest

import fmnist_jax
from fmnist_jax import config_checks
from fmnist_jax import models

CONFIGS = [("base", ()), ("speedrun", ()), ("speedrun", ("short",)), ("best", ()), ("best", ("cpu",)),
           ("resnet_smoke", ())]


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


def test_speedrun_short_is_the_three_epoch_record_and_the_default_differs_only_in_its_recipe():
  speedrun = importlib.import_module("fmnist_jax.experiments.speedrun")
  short, full = speedrun.get_config("short"), speedrun.get_config()
  changed = {"num_epochs": (3, 8), "augment.translate_pixels": (0, 2), "eval_tta_shift_pixels": (0, 1)}
  for field, values in changed.items():
    node_short, node_full = short, full
    for part in field.split(".")[:-1]:
      node_short, node_full = node_short[part], node_full[part]
    leaf = field.split(".")[-1]
    assert (node_short[leaf], node_full[leaf]) == values
    node_full[leaf] = node_short[leaf]
  assert full.to_dict() == short.to_dict()  # Nothing else differs.
  assert (short.learning_rate, short.augment.flip, short.eval_flip_tta) == (0.03, True, True)
  with pytest.raises(ValueError, match="'94' \\(default\\) or 'short'"):
    speedrun.get_config("long")
