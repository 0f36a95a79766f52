#!/usr/bin/env bash
# The steps of the evidence run (issue 19), in order; run by benchmarks/evidence_run.sh from a clean checkout.
# Runs the first step whose output is missing and exits 0, or exits 3 when every step is done. Sizes and the
# measured step times behind them: benchmarks/README.md, section 3, "Compute plan".
set -u
OUT=${EVIDENCE_ROOT:?run through benchmarks/evidence_run.sh}
PY=${PYTHON:-python}

step() {  # step NAME DONE-FILE COMMAND...: run COMMAND unless DONE-FILE exists
    local name=$1 done_file=$2
    shift 2
    [ -e "$done_file" ] && return 0
    echo "== $name: start $(date -u +%FT%TZ), commit $(git rev-parse HEAD)"
    "$@"
    local rc=$?
    echo "== $name: exit $rc $(date -u +%FT%TZ)"
    exit $rc
}

M=$OUT/benchmarks/metrics
step classifier-mnist "$M/fd-mnist/model.safetensors" \
    $PY benchmarks/fd_classifier.py --dataset mnist --out "$M/fd-mnist" --widths 16,32,64,128 --epochs 3
step classifier-fashion-mnist "$M/fd-fashion-mnist/model.safetensors" \
    $PY benchmarks/fd_classifier.py --dataset fashion-mnist --out "$M/fd-fashion-mnist" --widths 16,32,64,128 --epochs 8
step classifier-cifar10 "$M/fd-cifar10/model.safetensors" \
    $PY benchmarks/fd_classifier.py --dataset cifar10 --out "$M/fd-cifar10" --widths 32,64,128,256 --epochs 12
exit 3
