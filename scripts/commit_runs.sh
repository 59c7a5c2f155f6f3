#!/usr/bin/env bash
# Commit every finished run that `gsanet experiment ... --export DIR` copied into DIR, as it appears, so that a long
# experiment survives the end of a session (docs/experiments.md, "Long experiments").
#   bash scripts/commit_runs.sh results/study_runs results/ablation_runs            # every 60 s until killed
#   bash scripts/commit_runs.sh --once results/study_runs                           # one commit, then exit
# Only the named folders are committed (a path-limited commit: nothing else staged or changed goes in), in the
# repository that holds them; a commit that cannot be made now (another git command holds the index) is retried on
# the next round.
set -uo pipefail
every=60
once=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --every) every="$2"; shift 2 ;;
        --once) once=1; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        --*) echo "commit_runs.sh: unknown option $1 (use --every S, --once)" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [[ $# -eq 0 ]]; then
    echo "commit_runs.sh: name the folders to commit, e.g. results/study_runs" >&2
    exit 2
fi
dirs=()
for d in "$@"; do
    mkdir -p "$d" || { echo "commit_runs.sh: cannot create $d" >&2; exit 2; }
    dirs+=("$(cd "$d" && pwd)")
done
repo="$(git -C "${dirs[0]}" rev-parse --show-toplevel)" || { echo "commit_runs.sh: ${dirs[0]} is not in a git repository" >&2; exit 2; }

commit_once() {
    local d present=()
    for d in "${dirs[@]}"; do  # an empty folder matches nothing git knows: leave it out
        [[ -n "$(ls -A "$d" 2>/dev/null)" ]] && present+=("$d")
    done
    [[ ${#present[@]} -eq 0 ]] && return 0
    git -C "$repo" add -A -- "${present[@]}" || return 0
    if git -C "$repo" diff --cached --quiet -- "${present[@]}"; then
        return 0
    fi
    local new
    new="$(git -C "$repo" diff --cached --name-only -- "${present[@]}" | grep '/summary.json$' | xargs -r -n1 dirname | xargs -r -n1 basename | sort -u | tr '\n' ' ')"
    local message="Finished runs: ${new:-logs and recorded commands}"
    git -C "$repo" commit -q -m "${message% }" -- "${present[@]}" && echo "$(date +%T) committed: ${message% }"
}

if [[ $once -eq 1 ]]; then
    commit_once
    exit 0
fi
trap 'commit_once; exit 0' TERM INT
while true; do
    commit_once
    sleep "$every" & wait $!
done
