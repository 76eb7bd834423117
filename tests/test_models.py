"""The CNN matches the original model table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax import models
from fmnist_jax.experiments import base


def _params(config):
  model = models.create_model(config)
  return model, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]


@pytest.mark.slow
def test_base_model_has_the_original_parameter_count_and_shapes():
  _, params = _params(base.get_config())
  shapes = {"/".join(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  assert shapes == {
      "Conv_0/kernel": (5, 5, 1, 64), "Conv_0/bias": (64,),
      "Conv_1/kernel": (5, 5, 64, 64), "Conv_1/bias": (64,),
      "Dense_0/kernel": (3136, 1024), "Dense_0/bias": (1024,),  # flatten 7*7*64 = 3136
      "Dense_1/kernel": (1024, 10), "Dense_1/bias": (10,),
  }
  assert sum(x.size for x in jax.tree.leaves(params)) == 3_326_666


@pytest.mark.slow
def test_logits_shape_and_dtype_with_bfloat16_compute():
  config = base.get_config()
  config.dtype = "bfloat16"
  model, params = _params(config)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))  # Parameters stay float32.
  logits = model.apply({"params": params}, jnp.ones((3, 28, 28, 1)))
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32


def test_activation_is_configurable():
  config = base.get_config()
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 28, 28, 1))
  model, params = _params(config)
  config.model.activation = "relu"
  relu_out = models.create_model(config).apply({"params": params}, x)
  assert not np.allclose(model.apply({"params": params}, x), relu_out)
