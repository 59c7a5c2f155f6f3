#!/usr/bin/env bash
# The README's speed tables, on every instruction set this machine can run: float32 at native, then at AVX2 (PyTorch,
# oneDNN, MKL and the fused kernel capped at AVX2, `gsanet bench --isa avx2`); where the CPU has native bfloat16
# (AVX512-BF16 or AMX), the module and model tables in bf16 autocast at native too; then the summary of every ratio
# beside its target (`gsanet bench summary`). Run it on an otherwise idle machine: each table is measured side by side
# in one process, but nothing else should share the cores. Writes results/bench_*_<precision>_<isa>.* and
# results/bench_summary_*.{md,csv}.
# Also the A/B tables of the stride-2 pool and the q/k/v projection (scripts/bench_pool.py, bench_projection.py).
#   bash scripts/bench.sh            # all of it, about 20 minutes on 2 cores (about 30 with bf16)
#   ISAS="avx2" BF16=0 bash scripts/bench.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
BENCH=(.venv/bin/gsanet bench)
MODULE=(module --threads 2 --layers gsa gsa_gemm conv3x3 gsa_pytorch)
MODEL=(model --threads 2 --repeats 5 --models gsa_resnet50 conv_resnet50 gsa_resnet26_tiny conv_resnet26_tiny)
for isa in ${ISAS:-native avx2}; do
    "${BENCH[@]}" axial --threads 2 --isa "$isa"
    "${BENCH[@]}" "${MODULE[@]}" --isa "$isa"
    "${BENCH[@]}" "${MODEL[@]}" --isa "$isa"
done
AVX2=(env ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
.venv/bin/python scripts/bench_pool.py --threads 2  # the A/B tables behind the pool's and the projection's dispatch
"${AVX2[@]}" .venv/bin/python scripts/bench_pool.py --threads 2
.venv/bin/python scripts/bench_projection.py --threads 2
"${AVX2[@]}" .venv/bin/python scripts/bench_projection.py --threads 2
if [[ "${BF16:-auto}" != 0 ]] && grep -qw -e avx512_bf16 -e amx_bf16 /proc/cpuinfo 2>/dev/null; then
    "${BENCH[@]}" axial --threads 2 --precision bf16
    "${BENCH[@]}" axial --threads 2 --precision bf16 --isa avx2
    "${BENCH[@]}" "${MODULE[@]}" --precision bf16
    "${BENCH[@]}" "${MODEL[@]}" --precision bf16
elif [[ "${BF16:-auto}" != 0 ]]; then
    echo "bench.sh: this CPU has no native bfloat16 (avx512_bf16 or amx_bf16): no bf16 tables" >&2
fi
"${BENCH[@]}" summary
