#!/usr/bin/env bash
# The one-GPU check (benchmarks/gpu/run.py) from the source tree, the project not installed:
#   bash benchmarks/gpu/run.sh --out "$OUT"                         # on the GPU machine (about 6 minutes)
#   bash benchmarks/gpu/run.sh --smoke --device cpu --out /tmp/gpu   # every code path on a CPU (CI)
# PYTHON picks the interpreter (default: python3, the one that holds torch on the GPU machine).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu/run.py "$@"
