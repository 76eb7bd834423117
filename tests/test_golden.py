"""Golden values: the first steps of a small config on real Fashion-MNIST, loss and gradient norm per step.

These pin the numerics of the whole training path (data order, initialisation, model, loss,
optimizer, runtime options). If this test fails after a change that is *meant* to change the
numbers (a new default, a different initialiser, a jax/XLA upgrade that reorders sums), check the
change is intended, then update GOLDEN_* from the values the failure prints. If it fails after a
refactor that should change nothing, the refactor changed behaviour.
"""

import numpy as np

from fmnist_jax import train
from tests.conftest import tiny_config

# tiny_config(), seed 0, six steps one by one (CPU, float32); recorded with jax 0.10.2.
GOLDEN_LOSS = [2.345596, 2.273710, 2.132351, 2.011308, 1.922455, 1.846317]
GOLDEN_GRAD_NORM = [1.688808, 1.806562, 1.315670, 1.407367, 1.697264, 1.334674]


def test_first_steps_match_the_golden_loss_and_gradient_norm():
  trainer = train.Trainer(tiny_config())
  state, losses, grad_norms = trainer.initial_state(), [], []
  for step in range(len(GOLDEN_LOSS)):
    state, metrics = trainer.run_steps(state, step, step + 1)
    losses.append(float(metrics.loss.compute()))
    grad_norms.append(float(metrics.grad_norm.compute()))
  message = (f"losses {np.round(losses, 6).tolist()}, gradient norms {np.round(grad_norms, 6).tolist()}: "
             "update GOLDEN_* only if the change was meant to alter the numerics (see the module docstring)")
  np.testing.assert_allclose(losses, GOLDEN_LOSS, rtol=2e-5, err_msg=message)
  np.testing.assert_allclose(grad_norms, GOLDEN_GRAD_NORM, rtol=2e-5, err_msg=message)
