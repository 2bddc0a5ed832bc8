#!/usr/bin/env bash
# Set up the lab in ./.venv (idempotent) and run its main job: execute every notebook headless
# on the embedded data and collect the executed notebooks and their figures in labkit-output/.
# Extra arguments go to `labkit reproduce` (e.g. `--profile quick`, `00 01`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and pinned: these builds are what the project is tested with (CUDA-enabled, CPU works)
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/labkit reproduce "$@"
