#!/usr/bin/env bash
# The main job: set-up (idempotent), then train the default GSA-ResNet on Fashion-MNIST and show its results.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec .venv/bin/gsanet train "$@"
