#!/usr/bin/env bash
# The long experiments of docs/experiments.md, in order, on an otherwise idle machine (never beside a benchmark):
#   1. the converged study: the sweep grown until it brackets every family's choice, then 3 seeds of each family at
#      5,000, 20,000 and all 55,000 non-held-out training images (gsanet experiment study);
#   2. the ablations with 3 seeds (gsanet experiment ablations --seeds 0 1 2).
# Two single-thread runs at a time. Each finished run is copied without checkpoints into results/study_runs or
# results/ablation_runs and committed as it completes (scripts/commit_runs.sh); the reports are rewritten and
# committed after each command. Run it again to continue: finished runs are skipped, interrupted ones resume from
# their last epoch (their checkpoints live in runs/, on this machine only).
#   bash scripts/long_experiments.sh             # everything (about 25 CPU-hours on a 2-core machine)
#   bash scripts/long_experiments.sh study       # only the study; `ablations` only the ablations
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
what="${1:-all}"
case "$what" in all|study|ablations) ;; *) echo "long_experiments.sh: say all, study or ablations" >&2; exit 2 ;; esac
bash scripts/setup.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
bash scripts/commit_runs.sh results/study_runs results/ablation_runs &
committer=$!
trap 'kill $committer 2>/dev/null; wait $committer 2>/dev/null' EXIT
status=0
if [[ "$what" != ablations ]]; then
    .venv/bin/gsanet experiment study --jobs 2 --resume --export results/study_runs --out results || status=$?
    .venv/bin/gsanet experiment study --table-only --runs results/study_runs --out results
    git add results/study.md results/study_*.csv results/study_*.png
    git commit -q -m "Study report from the committed run directories" -- results/study.md results/study_*.csv \
        results/study_*.png || true
fi
if [[ "$what" != study ]]; then
    .venv/bin/gsanet experiment ablations --seeds 0 1 2 --jobs 2 --resume --export results/ablation_runs \
        --out results || status=$?
    .venv/bin/gsanet experiment ablations --seeds 0 1 2 --table-only --runs results/ablation_runs --out results
    git add results/experiment_ablations.md results/experiment_ablations.csv
    git commit -q -m "Ablation table from the committed run directories" -- results/experiment_ablations.md \
        results/experiment_ablations.csv || true
fi
exit $status
