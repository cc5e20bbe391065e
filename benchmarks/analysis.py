"""How true are the lowered graph's figures? Predicted vs measured, as ratios taken in one run.

    python benchmarks/analysis.py [--micro-batch 2] [--examples examples/*.yaml]

1. For every example's tiny profile (the example itself when it has none), on CPU in fp32:
   - parameters: the graph's against the module the runtime builds (must be exact);
   - FLOPs: the graph's against torch.utils.flop_counter.FlopCounterMode over one forward and
     backward, for each recompute policy the runtime implements (vlac.runtime.recompute). CPU
     fused attention is invisible to FlopCounterMode, so SDPA is forced to the MATH backend and
     the graph's attention records are converted to that convention (dense, 2x backward; the
     graph counts causal attention as causal and FlashAttention's backward as 2.5x) -- the
     conversion is printed as its own column (tolerance 2 %);
   - bytes saved for backward: the graph's against the storages a CPU forward really keeps alive
     for backward, per policy (tolerance 5 %); for `none` also against the storages packed by
     saved_tensors_hooks.
2. The GPT-layer formulas of ../shared/DESIGN.md for a GPT-3-style spec, against the graph.
3. Lowering time of the flagship and of 100B-class specs: in a fresh process (first call: torch
   imports its meta-kernel machinery, torch._dynamo included, on the first meta op) and warm.

Exit status 1 when a tolerance is missed.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import time
from pathlib import Path

import vlac
from vlac.compiler import formulas as F
from vlac.compiler.graph import RECOMPUTE
from vlac.compiler.measure import (flash_minus_math, measured_flops, measured_params, measured_saved_bytes,
                                   predicted_math_flops)

ROOT = Path(__file__).resolve().parents[1]
FLOPS_TOLERANCE, BYTES_TOLERANCE = 0.02, 0.05
FLAGSHIP = ROOT / "examples" / "vla_10b_moe_h100.yaml"
# 100B-class variants of the flagship: a dense Llama-style decoder and a fine-grained MoE
LARGE_SPECS = {
    "dense-100b": ["backbone.layers=80", "backbone.hidden=10240", "backbone.heads=80", "backbone.kv_heads=8",
                   "backbone.head_dim=128", "backbone.ffn_hidden=32768", "moe=null"],
    "moe-100b": ["backbone.layers=48", "backbone.hidden=5120", "backbone.heads=40", "backbone.kv_heads=8",
                 "backbone.head_dim=128", "moe.experts=64", "moe.top_k=6", "moe.expert_hidden=2048"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--examples", nargs="*", default=None, help="spec files (default: examples/*.yaml)")
    parser.add_argument("--skip-timing", action="store_true", help="skip the lowering-time section")
    return parser.parse_args(argv)


def tiny(path: str | Path):
    """The example's tiny profile, or the example itself when it has no profiles."""
    raw = vlac.spec.read_mapping(Path(path))
    return vlac.load(path, profile="tiny" if "tiny" in (raw.get("profiles") or {}) else None)


def _ratios(exp, micro_batch: int) -> tuple[float, dict, float, dict, float]:
    g = vlac.lower(exp, micro_batch=micro_batch, dtype="fp32")
    params = g.params_total / measured_params(exp)
    flops = {p: predicted_math_flops(g, p) / measured_flops(exp, micro_batch, policy=p) for p in RECOMPUTE}
    conversion = flash_minus_math(g) / predicted_math_flops(g)
    saved, hooks = {}, 0.0
    for p in RECOMPUTE:
        m = measured_saved_bytes(exp, micro_batch, policy=p)
        saved[p] = g.saved_bytes(p) / m.live
        if p == "none":
            hooks = g.saved_bytes(p) / m.hooks
    return params, flops, conversion, saved, hooks


def _row(name: str, ratios: tuple, note: str = "") -> str:
    params, flops, conversion, saved, hooks = ratios
    return (f"{name:<22}{params:>8.4f}  " + "".join(f"{flops[p]:>11.4f}" for p in RECOMPUTE)
            + f"{conversion:>+13.4f}  " + "".join(f"{saved[p]:>11.4f}" for p in RECOMPUTE) + f"{hooks:>12.4f}{note}")


def _within(ratios: tuple) -> bool:
    params, flops, _, saved, hooks = ratios
    return (params == 1.0 and all(abs(r - 1) <= FLOPS_TOLERANCE for r in flops.values())
            and all(abs(r - 1) <= BYTES_TOLERANCE for r in [*saved.values(), hooks]))


def accuracy(paths: list[str], micro_batch: int) -> bool:
    print(f"== accuracy on every example's tiny profile (CPU, fp32, micro-batch {micro_batch}) ==")
    print("ratios predicted/measured; FLOPs in the MATH-backend convention (flash->math: what the "
          "conversion changed, relative)")
    header = (f"{'example':<22}{'params':>8}  " + "".join(f"{'FLOPs ' + p[:4]:>11}" for p in RECOMPUTE)
              + f"{'flash->math':>13}  " + "".join(f"{'saved ' + p[:4]:>11}" for p in RECOMPUTE) + f"{'hooks none':>12}")
    print(header)
    print("-" * len(header))
    ok = True
    for path in paths:
        name = Path(path).stem
        try:
            ratios = _ratios(tiny(path), micro_batch)
        except Exception as e:  # report and go on: one failing example must not hide the others
            print(f"{name:<22}FAILED: {type(e).__name__}: {e}")
            ok = False
            continue
        good = _within(ratios)
        ok &= good
        print(_row(name, ratios, "" if good else "   <- outside tolerance"))
    # not an example: dropless experts, whose group padding depends on the routing and is
    # charged at its bound (so >= 1 is expected; informational, not gated)
    exp = vlac.load(FLAGSHIP, ["moe.capacity_factor=null"], profile="tiny")
    print(_row("flagship, dropless", _ratios(exp, micro_batch), "   (padding at its bound)"))
    # latent attention (backbone.mla): gated where the value heads are as wide as the query/key
    # heads (the CPU runs its flash kernel, as the graph charges); with narrower value heads the
    # CPU falls back to SDPA's math path (flash refuses them), which keeps more than the CUDA
    # memory-efficient kernel the graph charges (informational)
    mla = "backbone.mla={{q_lora_rank: 48, kv_lora_rank: 32, qk_rope_head_dim: 16, qk_nope_head_dim: 16, v_head_dim: {}}}"
    for v, note in ((32, ""), (24, "   (CPU: SDPA math path)")):
        exp = vlac.load(ROOT / "examples" / "dense_text_1b.yaml", ["backbone.kv_heads=null", mla.format(v)], profile="tiny")
        ratios = _ratios(exp, micro_batch)
        ok &= bool(note) or _within(ratios)
        print(_row(f"dense, MLA v={v}", ratios, note))
    print()
    return ok


def autocast_gap(paths: list[str], micro_batch: int) -> None:
    print("== known gap: a bf16 lowering against the runtime's CUDA numerics (bf16 autocast, fp32 parameters) ==")
    print("measured on CPU under bf16 autocast; not gated. Autocast keeps bf16 copies of GEMM inputs and of the")
    print("weights for the step, and leaves the residual stream and norm inputs in fp32; the lowering at bf16")
    print("models an all-bf16 model")
    print(f"{'example':<22}{'graph bf16 / autocast':>24}{'graph fp32 / autocast':>24}")
    for path in paths:
        exp = tiny(path)
        measured = measured_saved_bytes(exp, micro_batch, autocast_bf16=True).live
        bf16 = vlac.lower(exp, micro_batch=micro_batch, dtype="bf16").saved_bytes()
        fp32 = vlac.lower(exp, micro_batch=micro_batch, dtype="fp32").saved_bytes()
        print(f"{Path(path).stem:<22}{bf16 / measured:>24.3f}{fp32 / measured:>24.3f}")
    print()


def gpt_formulas() -> bool:
    print("== GPT-3-style layer formulas (../shared/DESIGN.md) against the graph ==")
    exp = F.gpt_experiment(layers=4, hidden=256, heads=8, seq_len=256, vocab=1024)
    bb, s, V = exp.backbone, exp.train.seq_len, exp.vocab_layout().padded
    l, h, a = bb.layers, bb.hidden, bb.heads
    print(f"l={l} h={h} a={a} s={s} V={V}, bf16, learned positions, 4h GELU MLP, LayerNorm, MHA, biases, tied")
    ok = True

    def row(what: str, graph: float, formula: float, note: str = "") -> None:
        nonlocal ok
        ratio = graph / formula
        ok &= abs(ratio - 1) < 1e-9
        print(f"  {what:<44}{graph:>16,.0f}{formula:>16,.0f}{ratio:>9.4f}  {note}")

    print(f"  {'':<44}{'graph':>16}{'formula':>16}{'ratio':>9}")
    for b in (1, 4):
        g = vlac.lower(exp, micro_batch=b, dtype="bf16")
        if b == 1:
            row("parameters", g.params_total, F.parameters(l, h, V, s) + 2 * h,
                "formula + 2h: the final LayerNorm, which the formula leaves out")
        row(f"GEMM FLOPs, full recompute, B={b}", F.graph_gemm_flops_full_recompute(g),
            F.gemm_flops_full_recompute(b, s, l, h, V), "attention counted dense with 2x backward, as the formula")
        native = g.flops_executed("full")
        print(f"  {'  the graph as it runs (causal, flash, early stop)':<44}{native:>16,.0f}"
              f"{'':>16}{native / F.gemm_flops_full_recompute(b, s, l, h, V):>9.4f}")
    b = 1
    g = vlac.lower(exp, micro_batch=b, dtype="bf16")
    print("  activation bytes of one layer (b=1):")
    print(f"  {'':<44}{'graph':>16}{'formula':>16}{'ratio':>9}")
    flash_removes = 5 * a * s * s * b
    for t, sp in ((1, False), (2, False), (4, False), (2, True), (8, True)):
        tag = "no TP" if t == 1 else f"TP={t}" + (" +SP" if sp else "")
        graph = F.layer_bytes(g, 1, "none", t, sp)
        formula = F.activation_bytes(s, b, h, a, t, sp)
        print(f"  {'none, ' + tag:<44}{graph:>16,.0f}{formula:>16,.0f}{graph / formula:>9.4f}  "
              f"formula incl. 5as^2b/t = {flash_removes / t:,.0f} that flash never stores")
        row(f"  = flash form of the formula, {tag}", graph, F.flash_layer_bytes(s, b, h, a, t, sp),
            "32sbh + 4asb + 16sb (no dropout masks; lse; LN stats)")
        selective = F.activation_bytes(s, b, h, a, t, sp or t == 1, "selective")
        if sp or t == 1:
            print(f"  {'  vs Megatron selective 34sbh/t':<44}{graph:>16,.0f}{selective:>16,.0f}{graph / selective:>9.4f}"
                  "  flash = recomputing the attention core")
        row(f"full recompute, {tag}", F.layer_bytes(g, 1, "full", t, sp), F.activation_bytes(s, b, h, a, t, sp, "full"))
    ours = F.layer_bytes(g, 1, "selective")
    print(f"  {'vlac selective (GEMM/attention outputs kept)':<44}{ours:>16,.0f}{'':>16}"
          f"{ours / F.layer_bytes(g, 1, 'none'):>9.4f}  of none")
    print()
    return ok


_COLD = """
import json, sys, time
t0 = time.perf_counter()
import vlac
out = {"import_s": time.perf_counter() - t0}
path, sets = json.loads(sys.argv[1])
exp = vlac.load(path, sets)
t = time.perf_counter()
vlac.lower(exp)
out["first_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


def timing() -> None:
    print("== lowering time ==")
    specs = {"flagship": (str(FLAGSHIP), [])} | {k: (str(FLAGSHIP), v) for k, v in LARGE_SPECS.items()}
    proc = subprocess.run([sys.executable, "-c", _COLD, json.dumps(specs["flagship"])], capture_output=True, text=True,
                          check=True)
    cold = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"fresh process: import vlac {cold['import_s']:.2f} s, then the first lowering (flagship) "
          f"{cold['first_s']:.2f} s: it includes torch's one-time import of its meta-kernel machinery")
    print("(torch._dynamo, ~1.5 s on a quiet machine), paid by the first meta op of any program")
    print("after that, min of 5 lowerings (CPU seconds are less sensitive to a busy machine than wall seconds):")
    print(f"{'spec':<12}{'params':>10}{'layers':>8}{'blocks analysed':>18}{'wall s':>9}{'CPU s':>9}")
    for name, (path, sets) in specs.items():
        exp = vlac.load(path, sets)
        wall, cpu = [], []
        for _ in range(5):
            t, c = time.perf_counter(), time.process_time()
            g = vlac.lower(exp)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        print(f"{name:<12}{g.params_total / 1e9:>9.1f}B{g.n_layers:>8}{', '.join(sorted(g.blocks)):>18}"
              f"{min(wall):>9.3f}{min(cpu):>9.3f}")
    print()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = args.examples or sorted(glob.glob(str(ROOT / "examples" / "*.yaml")))
    ok = accuracy(paths, args.micro_batch)
    autocast_gap([p for p in paths if Path(p).stem in ("dense_text_1b", "llava", "vla_10b_moe_h100")],
                 args.micro_batch)
    ok &= gpt_formulas()
    if not args.skip_timing:
        timing()
    print("all within tolerance" if ok else "SOME FIGURES ARE OUTSIDE TOLERANCE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
