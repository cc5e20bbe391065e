#!/usr/bin/env bash
# The main job on the bundled examples: validate and compile the flagship and print its plan,
# then emit the tiny example's program and train it through submitit's local executor.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=1
.venv/bin/vlac validate examples/vla_10b_moe_h100.yaml
.venv/bin/vlac compile examples/vla_10b_moe_h100.yaml
.venv/bin/vlac emit examples/tiny_vla.yaml -o runs/tiny-vla
.venv/bin/vlac submit runs/tiny-vla --executor local
