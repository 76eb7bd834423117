"""The speed options (conv_impl, stem_impl, pool_impl, cpu_ynn_fusions) change arithmetic, never the model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import resnet_smoke
from fmnist_jax import config_checks
from fmnist_jax import errors
from fmnist_jax import kernels
from fmnist_jax import models
from fmnist_jax import runtime
from fmnist_jax import whitening
from tests.conftest import tiny_config


def _resnet(**overrides):
  """resnet_smoke's tiny ResNet: a stem, a stride-1 stage and a stride-2 stage with a 1x1 projection."""
  config = tiny_config(**overrides)
  config.model = resnet_smoke.get_config().model
  return config


@pytest.mark.slow
@pytest.mark.parametrize("make_config", [tiny_config, _resnet], ids=["cnn", "resnet"])
def test_conv_impls_share_parameters_outputs_and_gradients(fmnist, make_config):
  xla = models.create_model(make_config(**{"runtime.conv_impl": "xla"}))
  im2col = models.create_model(make_config(**{"runtime.conv_impl": "im2col"}))
  assert (xla.conv, im2col.conv) == (jax.lax.conv_general_dilated, kernels.im2col_conv)
  images = jnp.asarray(fmnist["test"].images[:8], jnp.float32) / 255.0
  labels = jnp.asarray(fmnist["test"].labels[:8])
  variables = xla.init(jax.random.PRNGKey(0), images[:1])
  params = variables["params"]
  # Checkpoints are interchangeable: the same parameter tree and shapes.
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, jax.eval_shape(im2col.init, jax.random.PRNGKey(0), images[:1])["params"])

  def loss(model, p):
    logits = model.apply({**variables, "params": p}, images)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels]), logits

  grad = lambda model: jax.jit(jax.value_and_grad(lambda p: loss(model, p), has_aux=True))
  (loss_x, logits_x), grads_x = grad(xla)(params)
  (loss_i, logits_i), grads_i = grad(im2col)(params)
  # The same float32 products summed in another order: agreement to rounding.
  np.testing.assert_allclose(logits_i, logits_x, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(loss_i, loss_x, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads_i, grads_x)


@pytest.mark.parametrize("kernel,strides,padding", [(3, 2, ((1, 1), (1, 1))), (1, 2, "VALID"), (5, 1, "SAME"),
                                                    (3, 2, "SAME")])
def test_im2col_conv_matches_xla_with_strides(kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 13, 14, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 3, 5)), jnp.float32)
  args = ((strides, strides), padding)
  expected = jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(kernels.im2col_conv(x, w, *args), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,channels", [(2, 1), (3, 1), (3, 2)])
def test_shifted_sum_conv_matches_xla_valid(kernel, channels):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((3, 28, 27, channels)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, channels, 2 * kernel * kernel * channels)), jnp.float32)
  expected = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = kernels.shifted_sum_conv(x, w, (1, 1), "VALID")
  assert got.shape == expected.shape == (3, 29 - kernel, 28 - kernel, w.shape[-1])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(NotImplementedError):
    kernels.shifted_sum_conv(x, w, (1, 1), "SAME")


def test_stem_impls_share_the_whitened_models_parameters_and_outputs():
  config = lambda impl: tiny_config(**{"model.whiten_kernel_size": 3, "model.batch_norm": True,
                                       "runtime.stem_impl": impl})
  xla, slices = models.create_model(config("xla")), models.create_model(config("slices"))
  assert (xla.stem_conv, slices.stem_conv) == (jax.lax.conv_general_dilated, kernels.shifted_sum_conv)
  images = jnp.asarray(np.random.default_rng(1).random((4, 28, 28, 1)), jnp.float32)
  variables = xla.init(jax.random.PRNGKey(0), images[:1])
  stem = variables["params"][whitening.STEM]
  stem = {**stem, "kernel": jax.random.normal(jax.random.PRNGKey(1), stem["kernel"].shape)}  # Not the zeros of init.
  variables = {**variables, "params": {**variables["params"], whitening.STEM: stem}}
  np.testing.assert_allclose(slices.apply(variables, images), xla.apply(variables, images), rtol=1e-4, atol=1e-5)
  assert runtime.resolve(config("auto").runtime, "cpu").stem_impl == "slices"
  assert runtime.resolve(config("auto").runtime, "gpu").stem_impl == "xla"


@pytest.mark.parametrize("shape,window", [((3, 28, 28, 4), (2, 2)), ((2, 13, 11, 3), (3, 2))])
def test_strided_max_pool_matches_flax_bitwise_ties_included(shape, window):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 2, shape), jnp.float32)  # Every window full of ties.
  out_shape = (shape[0], shape[1] // window[0], shape[2] // window[1], shape[3])
  g = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
  pooled = lambda f: jax.jit(jax.value_and_grad(lambda x: jnp.vdot(f(x), g)))(x)
  value, grad = pooled(lambda x: kernels.strided_max_pool(x, window))
  ref_value, ref_grad = pooled(lambda x: nn.max_pool(x, window, strides=window))
  np.testing.assert_array_equal(value, ref_value)
  np.testing.assert_array_equal(grad, ref_grad)  # Each window's first maximum gets the gradient.


def test_auto_choices_and_unknown_names():
  cpu = jax.default_backend() == "cpu"
  assert runtime.resolve(tiny_config(**{"runtime.fuse_steps": "auto"}).runtime).conv_impl == "xla"
  assert runtime.resolve(tiny_config(**{"runtime.fuse_steps": "on"}).runtime).conv_impl == ("im2col" if cpu else "xla")
  assert runtime.resolve(tiny_config().runtime).pool_impl == ("slices" if cpu else "xla")
  for field in ("conv_impl", "stem_impl", "pool_impl"):
    with pytest.raises(errors.ConfigError, match=field):
      config_checks.validate(tiny_config(**{f"runtime.{field}": "fft"}), 1)


def test_cpu_ynn_fusions_hands_only_the_named_ops_to_ynnpack():
  x, w = jnp.ones((4, 14, 14, 4)), jnp.ones((5, 5, 4, 8))
  def compiled(config):
    step = lambda x, w: jnp.tanh(jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))).reshape(4, -1) @ jnp.ones((1568, 3))
    options = runtime.resolve(config.runtime).compiler_options
    return jax.jit(step, compiler_options=options).lower(x, w).compile().as_text()
  if jax.default_backend() != "cpu":
    assert runtime.resolve(tiny_config().runtime).compiler_options is None
    return
  fusions = lambda text: [line for line in text.splitlines() if '"__ynn_fusion"' in line]
  (dot_fusion,) = fusions(compiled(tiny_config(**{"runtime.cpu_ynn_fusions": "dot"})))  # The dot, not the convolution.
  assert '/dot_general"' in dot_fusion  # Its op_name.
  assert not fusions(compiled(tiny_config(**{"runtime.cpu_ynn_fusions": ""})))  # Eigen for everything.
  jaxlib_default = tiny_config(**{"runtime.cpu_ynn_fusions": None})
  assert runtime.resolve(jaxlib_default.runtime).compiler_options is None  # jaxlib's own choice.
  with pytest.raises(errors.ConfigError, match="cpu_ynn_fusions"):
    config_checks.validate(tiny_config(**{"runtime.cpu_ynn_fusions": "dot,winograd"}), 1)


def test_default_cpu_options_sum_bias_gradients_without_reduce_window():
  """XLA:CPU splits a long reduction (a conv bias gradient over N*H*W) into a slow reduce-window;
  YNNPACK's reduce (the default "dot,reduce") takes the whole sum."""
  if jax.default_backend() != "cpu":
    return
  x = jnp.ones((250, 28, 28, 64))
  hlo = lambda config: jax.jit(lambda x: x.sum((0, 1, 2)),
                               compiler_options=runtime.resolve(config.runtime).compiler_options).lower(
      x).compile().as_text()
  assert "reduce-window" in hlo(tiny_config(**{"runtime.cpu_ynn_fusions": "dot"}))
  assert "reduce-window" not in hlo(tiny_config())
