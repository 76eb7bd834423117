"""Classifies images: python scripts/predict.py IMAGE [IMAGE ...] [--workdir=W] [--top_k=K] [--json].

The command line of `fmnist_jax.predict` (see there), run from a checkout.
"""

from fmnist_jax import predict

if __name__ == "__main__":
  predict.run()
