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
R=$OUT/benchmarks/results
step references-fashion-mnist "$R/fd-references-fashion-mnist.json" \
    $PY benchmarks/fd_references.py --dataset fashion-mnist --samples 5000 --metric "$M/fd-fashion-mnist" --out "$R/fd-references-fashion-mnist.json"
step references-cifar10 "$R/fd-references-cifar10.json" \
    $PY benchmarks/fd_references.py --dataset cifar10 --samples 5000 --metric "$M/fd-cifar10" --out "$R/fd-references-cifar10.json"

# EDM teachers (examples/train_diffusion_model.py), resumed from runs/teachers/edm-<data>/checkpoint.pt, then
# their float16 EMA weights exported to benchmarks/teachers/<data>/ and the teacher_heun reference row added
TEACHER_NET=(--channels 16 --channel-mult 1,2,4 --num-blocks 2 --attention 8 --dropout 0)
TEACHER_OPT=(--batch-size 64 --optimizer adam --lr 1e-3 --lr-warmup 500 --ema-decay 0.9995)
teacher() {  # teacher DATASET STEPS EVAL-EVERY
    local data=$1 dir=$OUT/runs/teachers/edm-$1 resume=()
    [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
    $PY examples/train_diffusion_model.py --dataset "$data" --out "$dir" --steps "$2" "${TEACHER_NET[@]}" \
        "${TEACHER_OPT[@]}" --eval-every "$3" --checkpoint-every 250 --log-every 100 --fd-samples 1000 \
        --fd-classifier "$M/fd-$data" --num-samples 64 --device cpu --no-progress "${resume[@]}" &&
    $PY benchmarks/export_teacher.py "$dir/checkpoint.pt" --out "$OUT/benchmarks/teachers/$data"
}
step teacher-cifar10 "$OUT/benchmarks/teachers/cifar10/model.safetensors" teacher cifar10 12000 4000
step references-teacher-cifar10 "$OUT/runs/teachers/edm-cifar10/references.done" bash -c "$PY benchmarks/fd_references.py \
    --dataset cifar10 --samples 5000 --metric '$M/fd-cifar10' --teacher '$OUT/runs/teachers/edm-cifar10/checkpoint.pt' \
    --out '$R/fd-references-cifar10.json' && touch '$OUT/runs/teachers/edm-cifar10/references.done'"
step teacher-mnist "$OUT/benchmarks/teachers/mnist/model.safetensors" teacher mnist 3000 1500
step teacher-fashion-mnist "$OUT/benchmarks/teachers/fashion-mnist/model.safetensors" teacher fashion-mnist 5000 2500
exit 3
