#!/usr/bin/env bash
# The test command: set-up (idempotent), lint, then the default test suite (slow tests excluded; add -m slow for them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
.venv/bin/ruff check gsanet tests
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
