"""GPU check: a single-GPU variant of the flagship, trained for a few steps in bf16 and in FP8,
with the planner's predictions beside the measurements, taken in the same run.

    python benchmarks/gpu_check.py [--layers 4 --steps 20 --warmup 5 --fp8-backend auto]

The variant keeps the flagship's widths (hidden, heads, experts, sequence length: the GEMM shapes
that decide speed) and cuts the depth to fit one GPU. For each precision it plans the variant for
one GPU of the detected kind (H100 or H200 preset), runs the training loop of the emitted program
(vlac.runtime: build, parallelize, Trainer) and records: tokens/s, model TFLOP/s per GPU, MFU
(model FLOPs over the dense BF16 peak, also for FP8, so the two compare), step time and peak
memory, measured and predicted, and their ratio. Results go to benchmarks/results/gpu_check.json
and gpu_check.md. FP8 uses TransformerEngine when it is installed, else torchao's float8 training
(the backend used is recorded). Without CUDA it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FLAGSHIP = Path(__file__).resolve().parents[1] / "examples" / "vla_10b_moe_h100.yaml"


def variant_overrides(layers: int, sequences: int, seq_len: int, fp8: bool, preset: str, steps: int) -> list[str]:
    """Spec overrides of the single-GPU variant (one precision)."""
    return [f"backbone.layers={layers}", f"train.global_batch_tokens={sequences * seq_len}",
            f"train.seq_len={seq_len}", f"train.steps={steps}", "train.checkpoint_every=1000000",
            "train.log_every=1", f"precision.fp8.enabled={str(fp8).lower()}",
            "precision.fp8.keep_first_last_bf16=false", "precision.dtype=bf16",
            f"cluster.preset={preset}", "cluster.nodes=1", "cluster.gpus_per_node=1",
            "launcher.kind=local", "launcher.tasks=1", "optimizer.schedule.warmup_steps=0"]


def gpu_preset(device_name: str) -> str:
    """The cluster preset of the GPU this runs on (H200 or else H100 figures)."""
    return "h200" if "H200" in device_name.upper() else "h100-sxm"


def summarize(name: str, plan: dict[str, Any], step_times: list[float], peak_memory_bytes: float,
              tokens_per_step: int, peak_flops: float, backend: str) -> dict[str, Any]:
    """One result row: measured (median step time after warm-up), predicted, and ratios."""
    step = statistics.median(step_times)
    pred = plan["predicted"]
    flops_per_token = plan["model"].get("model_flops_per_token") or plan["model"]["flops_per_token"]
    flops = flops_per_token * tokens_per_step
    return {
        "variant": name, "backend": backend, "steps_timed": len(step_times),
        "measured": {"step_time_s": step, "tokens_per_s": tokens_per_step / step,
                     "tflops_per_gpu": flops / step / 1e12, "mfu": flops / (step * peak_flops),
                     "peak_memory_gb": peak_memory_bytes / 1e9},
        "predicted": {"step_time_s": pred["step_time_s"], "tokens_per_s": pred["tokens_per_s"], "mfu": pred["mfu"],
                      "peak_memory_gb": pred["peak_memory_gb"]},
        "ratio_measured_over_predicted": {"step_time": step / pred["step_time_s"],
                                          "peak_memory": peak_memory_bytes / 1e9 / pred["peak_memory_gb"]},
    }


def render_markdown(rows: list[dict[str, Any]], device: str) -> str:
    lines = [f"# GPU check on {device}", "",
             "| variant | backend | tokens/s | TFLOP/s | MFU | step time s (pred) | ratio | peak GB (pred) | ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m, p, q = r["measured"], r["predicted"], r["ratio_measured_over_predicted"]
        lines.append(f"| {r['variant']} | {r['backend']} | {m['tokens_per_s']:,.0f} | {m['tflops_per_gpu']:.0f} | "
                     f"{m['mfu'] * 100:.1f} % | {m['step_time_s']:.3f} ({p['step_time_s']:.3f}) | {q['step_time']:.2f} | "
                     f"{m['peak_memory_gb']:.1f} ({p['peak_memory_gb']:.1f}) | {q['peak_memory']:.2f} |")
    return "\n".join(lines) + "\n"


def run_variant(name: str, overrides: list[str], steps: int, warmup: int, fp8_backend: str) -> dict[str, Any]:
    import torch

    import vlac
    from vlac.runtime import distributed
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer, build_scheduler
    from vlac.runtime.parallel import parallelize
    from vlac.runtime.trainer import Trainer

    exp = vlac.load(FLAGSHIP, overrides)
    plan = vlac.plan(exp, pin={"dp": 1, "tp": 1, "pp": 1, "ep": 1, "cp": 1}).to_json()
    env = distributed.setup("cuda")
    model = parallelize(build_model(exp, env.device), exp, plan, env, fp8_backend=fp8_backend)
    optimizer = build_optimizer(model.model, exp)
    trainer = Trainer(exp, plan, model, optimizer, build_scheduler(optimizer, exp), env,
                      RESULTS / "gpu_check_runs" / name)
    trainer.checkpoint_at_end = False  # a 2B-parameter checkpoint is not what this measures
    trainer.fit(warmup)
    torch.cuda.reset_peak_memory_stats(env.device)
    timed = [m.step_time_s for m in trainer.fit(steps)]
    peak = torch.cuda.max_memory_allocated(env.device)
    backend = model.precision.fp8 if name == "fp8" else "bf16 autocast"
    return summarize(name, plan, timed, peak, exp.train.global_batch_tokens, exp.cluster.gpu.bf16_flops, backend)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the variant (flagship widths)")
    ap.add_argument("--sequences", type=int, default=4, help="sequences per step")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--fp8-backend", default="auto", choices=("auto", "transformer_engine", "torchao"))
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    backend = args.fp8_backend  # auto: TransformerEngine when installed, else torchao
    device = torch.cuda.get_device_name(0)
    preset = gpu_preset(device)
    rows = []
    total = args.warmup + args.steps
    for name, fp8 in (("bf16", False), ("fp8", True)):
        t0 = time.perf_counter()
        over = variant_overrides(args.layers, args.sequences, args.seq_len, fp8, preset, total)
        rows.append(run_variant(name, over, args.steps, args.warmup, backend))
        rows[-1]["wall_s"] = time.perf_counter() - t0
        torch.cuda.empty_cache()
        print(render_markdown(rows[-1:], device), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"device": device, "preset": preset, "torch": torch.__version__, "args": vars(args), "results": rows}
    (RESULTS / "gpu_check.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    (RESULTS / "gpu_check.md").write_text(render_markdown(rows, device))
    print(render_markdown(rows, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
