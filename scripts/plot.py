"""Training curves of a run or a sweep folder: python scripts/plot.py --workdir=W [--out=DIR].

The command line of `fmnist_jax.plot` (see there), run from a checkout.
"""

from fmnist_jax import plot

if __name__ == "__main__":
  plot.run()
