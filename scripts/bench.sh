#!/usr/bin/env bash
# The README's speed tables, on every instruction set this machine can run: native, then AVX2 (PyTorch, oneDNN, MKL
# and the fused kernel capped at AVX2, `gsanet bench --isa avx2`). Run it on an otherwise idle machine: each table is
# measured side by side in one process, but nothing else should share the cores. Writes results/bench_*_<isa>.*
#   bash scripts/bench.sh            # all of it, about 20 minutes on 2 cores
#   ISAS="avx2" bash scripts/bench.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
BENCH=(.venv/bin/gsanet bench)
for isa in ${ISAS:-native avx2}; do
    "${BENCH[@]}" axial --threads 2 --isa "$isa"
    "${BENCH[@]}" module --threads 2 --isa "$isa" --layers gsa gsa_gemm conv3x3 gsa_pytorch
    "${BENCH[@]}" model --threads 2 --isa "$isa" --repeats 5 \
        --models gsa_resnet50 conv_resnet50 gsa_resnet26_tiny conv_resnet26_tiny
done
