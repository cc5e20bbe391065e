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
# Train on data in the formats users have (docs/data.md's worked example): digit captions as
# WebDataset shards and CartPole episodes in LeRobot format, tokenized once into shards, then packed.
.venv/bin/python -m vlac.data.samples runs/data-demo
.venv/bin/vlac tokenizer train runs/data-demo/spec.yaml --modality text
.venv/bin/vlac tokenizer train runs/data-demo/spec.yaml --modality image --steps 200
.venv/bin/vlac prepare runs/data-demo/spec.yaml
.venv/bin/vlac submit runs/data-demo/spec.yaml --executor local
