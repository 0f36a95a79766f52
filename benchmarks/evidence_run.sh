#!/usr/bin/env bash
# The evidence run of issue 19 on one CPU core, as one resumable chain (metric classifiers, then teachers):
#
#   PYTHON=.venv/bin/python nohup bash benchmarks/evidence_run.sh >> runs/evidence_run.log 2>&1 &
#
# Each round refreshes a clean, detached checkout of this branch's last commit (runs/evidence-src; results
# record its git commit, never "+dirty") and runs the first unfinished step of benchmarks/evidence_steps.sh
# from it; steps write into this checkout (benchmarks/metrics/, runs/teachers/). Rerun the same command
# after an interruption: finished steps are skipped, interrupted ones resume from their checkpoints.
set -u
ROOT=$(git rev-parse --show-toplevel)
BRANCH=${EVIDENCE_BRANCH:-$(git -C "$ROOT" rev-parse --abbrev-ref HEAD)}
SRC="$ROOT/runs/evidence-src"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 EVIDENCE_ROOT="$ROOT"
PYTHON=${PYTHON:-python}
case $PYTHON in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac  # steps run elsewhere
export PYTHON
[ -d "$SRC" ] || git -C "$ROOT" worktree add --detach "$SRC" "$BRANCH" || exit 1
while true; do
    git -C "$SRC" checkout --detach -q "$BRANCH" || exit 1
    (cd "$SRC" && PYTHONPATH="$SRC" bash benchmarks/evidence_steps.sh)
    rc=$?
    [ $rc -eq 0 ] && continue                        # one step finished: refresh and take the next
    [ $rc -eq 3 ] && { echo "all steps done $(date -u +%FT%TZ)"; exit 0; }
    echo "step failed with exit status $rc $(date -u +%FT%TZ); rerun to resume"; exit $rc
done
