#!/usr/bin/env bash
# Create .venv with soundloc and the extras named in $1 (default: train,cpu,dev).
# torch is pinned first so pip takes the CPU wheel (a bare "torch" would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train,cpu,dev}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [[ ",$extras," == *",train,"* ]]; then
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[${extras}]"
