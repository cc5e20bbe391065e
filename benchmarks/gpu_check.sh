#!/usr/bin/env bash
# The GPU check, unattended, under ten minutes on one H100/H200:
#
#   bash benchmarks/gpu_check.sh
#
# 1. records the machine (nvidia-smi, torch, TransformerEngine if installed);
# 2. checks the runtime's CUDA paths on one GPU: the FP8 backend selection and a short bf16 / FP8
#    training step of the tiny example (a broken CUDA path fails here in seconds, not after
#    minutes of benchmark);
# 3. runs benchmarks/gpu_check.py: a single-GPU variant of the flagship in bf16 and in FP8
#    (TransformerEngine when installed, else torchao), writing tokens/s, MFU and predicted-vs-
#    measured step time and peak memory to benchmarks/results/gpu_check.{json,md}.
# Each stage has its own time limit; the exit status is that of the first stage that failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
OUT=benchmarks/results
mkdir -p "$OUT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: unavailable"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
    "$PY" -c "import transformer_engine as te; print('transformer_engine', te.__version__)" 2>/dev/null \
        || echo "transformer_engine: not installed (FP8 runs through torchao)"
} | tee "$OUT/gpu_check_env.txt"

echo "== runtime CUDA paths (tiny example, one GPU)"
timeout 120 "$PY" - <<'PY'
import runpy, tempfile, torch
import vlac
from vlac.runtime.precision import fp8_backend
assert torch.cuda.is_available(), "no CUDA device"
from vlac.runtime.precision import transformer_engine_installed
expect = "transformer_engine" if transformer_engine_installed() else "torchao"
assert fp8_backend("cuda", True) == expect and fp8_backend("cuda", False) == "none", expect
tmp = tempfile.mkdtemp()
for fp8 in ("false", "true"):
    exp = vlac.load("examples/tiny_vla.yaml", ["parallelism.dp=1", "cluster.gpus_per_node=1", "launcher.tasks=1",
                                               "train.steps=3", "precision.dtype=bf16",
                                               f"precision.fp8.enabled={fp8}", "precision.fp8.keep_first_last_bf16=false"])
    prog = vlac.emit(exp, vlac.plan(exp), f"{tmp}/p{fp8}")
    main = runpy.run_path(str(prog / "train.py"))["main"]
    losses = main(out_dir=f"{tmp}/run{fp8}")["losses"]
    print(f"tiny, fp8={fp8}: losses {[round(x, 3) for x in losses]}")
    assert all(l == l for l in losses), "non-finite loss"
PY

echo "== flagship single-GPU variant: bf16 and FP8"
timeout 480 "$PY" benchmarks/gpu_check.py "$@"
echo "results: $OUT/gpu_check.json, $OUT/gpu_check.md"
