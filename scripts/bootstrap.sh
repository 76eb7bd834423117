#!/usr/bin/env bash
# Sets up a fresh Debian machine for fmnist_jax: Fashion-MNIST from Debian's package (the offline
# fallback when TFDS cannot download) and the project's virtual environment .venv holding the
# package (editable) with its test and benchmark extras, or the extras named by $EXTRAS
# (EXTRAS=dev,cuda13 scripts/bootstrap.sh on a GPU host; cuda12, cuda13, tpu: docs/scale.md). A venv works whether or not pip may touch
# the system Python (Debian marks its python3 EXTERNALLY-MANAGED, PEP 668); run everything with
# .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
apt_install() {
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  apt_install dataset-fashion-mnist
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  # Debian's python3 has the venv module only with python3-venv (it brings ensurepip).
  if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  python3 -m venv --clear .venv
  echo "bootstrap: created .venv with $(.venv/bin/python --version)"
fi
EXTRAS="${EXTRAS:-dev,bench}"
if [[ ! "$EXTRAS" =~ ^[a-z0-9_]+(,[a-z0-9_]+)*$ ]]; then
  echo "error: EXTRAS=$EXTRAS must be a comma list of extras of setup.cfg, e.g. EXTRAS=dev,cuda13" >&2
  exit 2
fi
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
