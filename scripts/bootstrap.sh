#!/usr/bin/env bash
# Installs what fmnist_jax needs on a fresh Debian machine: Fashion-MNIST (Debian's package, the
# offline fallback when TFDS cannot download) and the package with its test and benchmark extras.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi
python3 -m pip install -q -e ".[dev,bench]"
