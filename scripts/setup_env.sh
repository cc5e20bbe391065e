#!/usr/bin/env bash
# Create .venv with the CPU build of torch 2.13.0 and vlac (editable, with test extras).
# torch is installed first and pinned: a bare `torch` requirement in a fresh environment
# resolves to a CUDA build of several GB.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
