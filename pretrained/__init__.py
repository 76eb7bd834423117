"""The shipped model: experiments/base.py trained 4 epochs on Fashion-MNIST (config.json, checkpoints/).

Installed as package data `fmnist_jax.pretrained`; `fmnist_jax.predict` uses it when no --workdir is given.
"""
