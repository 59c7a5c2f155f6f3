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
# run_part PLAN EXPORT_DIR REPORT_FILES...: train (continuing), rewrite the report from the committed copies, commit it
run_part() {
    local plan="$1" export="$2"
    shift 2
    .venv/bin/gsanet experiment "$plan" --jobs 2 --resume --export "$export" --out results || status=$?
    .venv/bin/gsanet experiment "$plan" --table-only --runs "$export" --out results
    git add -- "$@"
    git commit -q -m "$plan report from the committed run directories" -- "$@" || true
}
if [[ "$what" != ablations ]]; then
    run_part study results/study_runs results/study.md results/study_*.csv results/study_*.png
fi
if [[ "$what" != study ]]; then
    run_part ablations results/ablation_runs results/experiment_ablations.md results/experiment_ablations.csv
fi
exit $status
