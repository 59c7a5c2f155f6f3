#!/usr/bin/env bash
# One-time, idempotent set-up of a fresh machine: virtual environment, pinned packages, the dataset.
# A second run only checks what is there (a few seconds).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GSANET_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.gsanet-installed"
REQ_HASH="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$REQ_HASH" ]; then
    echo "[setup] installing pinned packages (first run takes a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r "$ROOT/requirements-dev.txt"
    "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"
    echo "$REQ_HASH" > "$STAMP"
else
    echo "[setup] packages up to date"
fi

# The fused CPU kernel of the axial attention layer (C++, cached under ~/.cache/torch_extensions; about 15 s the
# first time). Without a compiler the GEMM path runs instead, slower on CPU.
if ! "$VENV/bin/python" -c "import sys; from gsanet.layers import axial_kernel; sys.exit(0 if axial_kernel.build() else 1)" 2>/dev/null; then
    echo "[setup] WARNING: the fused CPU kernel did not build (is g++ installed?); the slower GEMM path will run"
fi

# Fashion-MNIST from Debian's dataset-fashion-mnist package (the training default). Without root or apt,
# training falls back to torchvision's download.
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -d "$FMNIST" ] || [ -z "$(ls -A "$FMNIST" 2>/dev/null)" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
        echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "[setup] $FMNIST missing and apt-get unavailable: training will download Fashion-MNIST with torchvision"
    fi
fi
echo "[setup] ready: $VENV"
