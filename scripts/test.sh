#!/usr/bin/env bash
# Set up .venv and run the test suite (what CI runs). Installs Debian's chromium for the
# preview-page test when running as root; otherwise that test skips and says why.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the preview browser test will skip" >&2
fi
bash scripts/setup.sh train,cpu,dev
# One worker per CPU (four at most): tests that wait on subprocesses, sockets and
# real-time streams overlap with the CPU-bound ones; modules keep their fixtures in one worker.
exec .venv/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadscope --durations=15 "$@"
