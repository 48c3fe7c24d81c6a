#!/usr/bin/env bash
# Fresh machine -> the demo: create .venv with the runtime (onnxruntime on CPU, no torch) and
# stream a generated clip through the bundled demo model into demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh cpu
exec .venv/bin/soundloc demo --out demo_out "$@"
