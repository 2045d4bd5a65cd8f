#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv, offline-safe and CPU-only.
#   bash scripts/setup.sh        # the package and its runtime dependencies
#   bash scripts/setup.sh test   # ... plus the test extras, the InverseBench extra (what its modules import:
#                                # sigpy, ehtim, lmdb, h5py, pandas, wandb) and the benchmark launchers
# torch is installed first and pinned (constraints.txt): an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip setuptools wheel
"${PIP[@]}" install -c constraints.txt "torch==2.13.0"
extras=""
if [ "${1:-}" = "test" ]; then
  extras="[test,inversebench,bench]"
fi
"${PIP[@]}" install -c constraints.txt -e ".${extras}"
"$VENV/bin/python" -c "import torch, lmaps_plugin; print(f'lmaps-plugin {lmaps_plugin.__version__} ready (torch {torch.__version__})')"
