"""Benchmark the Triton kernels against their PyTorch references and torch.compile(reference), and
write the measured kernel costs the planner can use (vlac.compiler.kernel_costs).

    python benchmarks/kernels.py [--tokens 16384 --hidden 3072 --experts 64 --top-k 4 ... --out PATH]
    python benchmarks/kernels.py --interpret [--out PATH]

With CUDA: checks each kernel against its reference, times Triton, the eager reference and the
compiled reference with CUDA events, and prints per case milliseconds, speedups and the achieved
bandwidth beside the one the cost model assumes (HBM_EFF of the GPU preset's bandwidth), as a
ratio taken in the same run. Writes ``benchmarks/results/kernels-<device>.json`` (or ``--out``) in
the format vlac.compiler.kernel_costs reads: point VLAC_KERNEL_COSTS at it (or at the directory)
and plans for that GPU cost RMSNorm and RoPE at the measured rates.

``--interpret`` (and any run without CUDA) is a smoke pass: tiny shapes through Triton's CPU
interpreter, each kernel against its reference, no timing (seconds are written as null, so a
file from this mode never changes a plan). It keeps this script from rotting between GPU
sessions. Exit status 1 means a kernel disagreed with its reference.

``bytes`` of a case counts each distinct tensor it is given or returns once (the traffic of an
ideal fused kernel); index tensors and tables captured by a case (expert ids, RoPE cos/sin, the
routing metadata) and intermediates (the MoE round trip's permuted buffer) are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMPLEMENTATIONS = ("triton", "torch", "compiled")
TINY_SHAPES = ["--tokens", "24", "--hidden", "40", "--experts", "5", "--top-k", "2", "--align", "4",
               "--seq-len", "6", "--head-dim", "8"]


@dataclass
class Case:
    """One kernel measurement: two implementations of the same function and its inputs."""

    name: str
    kernels: tuple[str, ...]  # vlac.runtime.kernels.KERNELS the case runs
    phase: str  # "forward" | "forward+backward"
    triton_fn: Callable[..., Any]
    torch_fn: Callable[..., Any]
    args: tuple  # reused by every call: autograd.grad leaves no state on the leaves
    shape: dict[str, int] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--align", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=4096, help="RoPE: tokens = batch * seq-len")
    parser.add_argument("--head-dim", type=int, default=128, help="RoPE: heads = hidden / head-dim")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--interpret", action="store_true",
                        help="CPU smoke pass: tiny shapes in Triton's interpreter, no timing")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default on a GPU: benchmarks/results/kernels-<device>.json; "
                             "with --interpret: none unless given)")
    return parser.parse_args(argv)


def with_backward(fn: Callable[..., torch.Tensor], n_grad: int) -> Callable[..., tuple]:
    """fn(*inputs, upstream) -> (output, gradients of the first ``n_grad`` inputs): forward and
    backward in one call, for fwd+bwd timing."""

    def run(*args):
        *inputs, upstream = args
        out = fn(*inputs)
        return (out.detach(), *torch.autograd.grad(out, inputs[:n_grad], upstream))

    return run


def build_cases(a: argparse.Namespace, device: torch.device) -> list[Case]:
    """All kernels at the shapes in ``a``, in bf16 as training runs them."""
    from vlac.runtime.kernels.fp8_cast import (
        blockwise_cast_to_fp8_reference, blockwise_cast_to_fp8_triton,
        cast_to_fp8_reference, cast_to_fp8_triton,
    )
    from vlac.runtime.kernels.moe_permute import (
        permute_reference, permute_triton, permuted_rows_bound,
        routing_metadata, unpermute_reference, unpermute_triton,
    )
    from vlac.runtime.kernels.rmsnorm import rms_norm_reference, rms_norm_triton
    from vlac.runtime.kernels.rope import apply_rope_reference, apply_rope_triton

    bf16, t, h = torch.bfloat16, a.tokens, a.hidden
    gen = torch.Generator(device).manual_seed(0)

    def randn(*shape, dtype=bf16, grad=False):
        return torch.randn(*shape, generator=gen, device=device).to(dtype).requires_grad_(grad)

    expert_idx = randn(t, a.experts, dtype=torch.float32).topk(a.top_k, dim=-1).indices
    weights = randn(t, a.top_k, dtype=torch.float32).softmax(dim=-1)
    rows = permuted_rows_bound(t, a.top_k, a.experts, a.align)  # static shapes: no host sync
    meta = routing_metadata(expert_idx, a.experts, a.align, rows)
    batch, heads = max(t // a.seq_len, 1), h // a.head_dim
    seq = t // batch
    angles = torch.rand(seq, a.head_dim, generator=gen, device=device) * 6.28
    cos, sin = angles.cos(), angles.sin()
    scale = torch.tensor(0.5, device=device)  # a device scale, as delayed scaling keeps it

    def permute(impl):
        return lambda x: impl(x, expert_idx, a.experts, a.align, rows)[0]

    def unpermute(impl):
        return lambda y, w: impl(y, meta, w)

    def moe_roundtrip(p, u):
        return lambda x, w: u(p(x, expert_idx, a.experts, a.align, rows)[0], meta, w)

    def rope(impl):
        return lambda x: impl(x, cos, sin)

    moe = {"tokens": t, "hidden": h, "experts": a.experts, "top_k": a.top_k, "align": a.align}
    rows2d = {"tokens": t, "hidden": h}
    heads4d = {"batch": batch, "seq_len": seq, "heads": heads, "head_dim": a.head_dim}
    x, q = randn(t, h), randn(batch, seq, heads, a.head_dim)
    fwd, both = "forward", "forward+backward"
    return [
        Case("moe_permute", ("moe_permute",), fwd, permute(permute_triton), permute(permute_reference), (x,), moe),
        Case("moe_unpermute", ("moe_unpermute",), fwd, unpermute(unpermute_triton), unpermute(unpermute_reference),
             (randn(rows, h), weights), moe),
        Case("moe_roundtrip_fwd_bwd", ("moe_permute", "moe_unpermute"), both,
             with_backward(moe_roundtrip(permute_triton, unpermute_triton), 2),
             with_backward(moe_roundtrip(permute_reference, unpermute_reference), 2),
             (x.detach().requires_grad_(), weights.detach().requires_grad_(), randn(t, h)), moe),
        Case("fp8_cast", ("fp8_cast",), fwd, lambda x: cast_to_fp8_triton(x, scale),
             lambda x: cast_to_fp8_reference(x, scale), (x,), rows2d),
        Case("fp8_blockwise_1x128", ("fp8_blockwise_cast",), fwd, lambda x: blockwise_cast_to_fp8_triton(x, (1, 128)),
             lambda x: blockwise_cast_to_fp8_reference(x, (1, 128)), (x,), {**rows2d, "block_m": 1, "block_n": 128}),
        Case("fp8_blockwise_128x128", ("fp8_blockwise_cast",), fwd,
             lambda x: blockwise_cast_to_fp8_triton(x, (128, 128)),
             lambda x: blockwise_cast_to_fp8_reference(x, (128, 128)), (x,),
             {**rows2d, "block_m": 128, "block_n": 128}),
        Case("rms_norm", ("rms_norm",), fwd, rms_norm_triton, rms_norm_reference, (x, randn(h)), rows2d),
        Case("rms_norm_fwd_bwd", ("rms_norm",), both, with_backward(rms_norm_triton, 2),
             with_backward(rms_norm_reference, 2),
             (x.detach().requires_grad_(), randn(h, grad=True), randn(t, h)), rows2d),
        Case("apply_rope", ("apply_rope",), fwd, rope(apply_rope_triton), rope(apply_rope_reference), (q,), heads4d),
        Case("apply_rope_fwd_bwd", ("apply_rope",), both, with_backward(rope(apply_rope_triton), 1),
             with_backward(rope(apply_rope_reference), 1),
             (q.detach().requires_grad_(), randn(batch, seq, heads, a.head_dim)), heads4d),
    ]


def flat_tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in flat_tensors(v)]
    return []


def bytes_moved(args: tuple, outputs: Any) -> float:
    """Each distinct storage among the inputs and outputs, once (see the module docstring)."""
    seen, total = set(), 0
    for t in flat_tensors(args) + flat_tensors(outputs):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return float(total)


def outputs_match(got: Any, ref: Any) -> bool:
    """FP8 tensors must match bit for bit; others within bf16-level tolerance."""
    if isinstance(got, (tuple, list)):
        return len(got) == len(ref) and all(outputs_match(g, r) for g, r in zip(got, ref))
    if got.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return torch.equal(got.view(torch.uint8), ref.view(torch.uint8))
    tol = 2e-2 if got.dtype == torch.bfloat16 else 1e-4
    return torch.allclose(got.float(), ref.float(), rtol=tol, atol=tol)


def time_cuda_ms(fn: Callable[..., Any], args: tuple, warmup: int, iters: int) -> float:
    """Mean milliseconds per call, measured with CUDA events around ``iters`` back-to-back calls."""
    for _ in range(warmup):  # includes Triton autotuning/compilation and torch.compile
        fn(*args)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn(*args)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def result_row(case: Case, match: bool, nbytes: float, seconds: dict[str, float | None]) -> dict[str, Any]:
    """One entry of the results file (vlac.compiler.kernel_costs.ResultEntry)."""
    return {"case": case.name, "kernels": list(case.kernels), "phase": case.phase, "shape": dict(case.shape),
            "bytes": nbytes, "match": match, "seconds": {k: seconds.get(k) for k in IMPLEMENTATIONS}}


def results_file(device: str, settings: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole file, validated by the reader the planner uses (a bad writer fails here, not there)."""
    from vlac.compiler.kernel_costs import FORMAT, parse_results

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    data = {"format": FORMAT, "device": device, "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(settings).items())},
            "results": rows}
    parse_results(data, "benchmarks/kernels.py output")
    return data


def write_results(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


def benchmark(a: argparse.Namespace) -> int:
    """Time every case on the current GPU; print a table and write the results file."""
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    assumed = assumed_bandwidth(name)
    rows, table, all_match = [], [], True
    for case in build_cases(a, device):
        out = case.triton_fn(*case.args)
        match = outputs_match(out, case.torch_fn(*case.args))
        all_match &= match
        seconds: dict[str, float | None] = {}
        for label, fn in (("triton", case.triton_fn), ("torch", case.torch_fn),
                          ("compiled", torch.compile(case.torch_fn))):
            try:
                seconds[label] = time_cuda_ms(fn, case.args, a.warmup, a.iters) / 1e3
            except Exception as exc:  # a reference that torch.compile cannot handle is a result too
                print(f"{case.name}/{label} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                seconds[label] = None
        row = result_row(case, match, bytes_moved(case.args, out), seconds)
        rows.append(row)
        table.append(table_row(row, assumed))
    print_table(table, name, assumed)
    path = a.out or RESULTS_DIR / f"kernels-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json"
    write_results(results_file(name, a, rows), path)
    return 0 if all_match else 1


def assumed_bandwidth(device: str) -> float | None:
    """What the cost model assumes a streaming kernel reaches on `device`: HBM_EFF of its preset's
    HBM bandwidth (None for a GPU no preset describes)."""
    from vlac.compiler.hardware import HBM_EFF
    from vlac.compiler.kernel_costs import gpu_matches
    from vlac.spec.system import PRESETS, Cluster

    for preset in PRESETS:
        gpu = Cluster.model_validate({"preset": preset}).gpu
        if gpu_matches(device, gpu.name):
            return gpu.memory_bandwidth * HBM_EFF
    return None


def ratio(slow: float | None, fast: float | None) -> float | None:
    """How many times faster ``fast`` is; None when either is missing."""
    return slow / fast if slow and fast else None


def table_row(row: dict[str, Any], assumed: float | None) -> dict[str, Any]:
    s = row["seconds"]
    achieved = row["bytes"] / s["triton"] if s["triton"] else None
    return {"case": row["case"], "match": row["match"],
            **{f"{k}_ms": None if s[k] is None else s[k] * 1e3 for k in IMPLEMENTATIONS},
            "x_torch": ratio(s["torch"], s["triton"]), "x_compiled": ratio(s["compiled"], s["triton"]),
            "gb_s": None if achieved is None else achieved / 1e9, "vs_assumed": ratio(achieved, assumed)}


def print_table(rows: list[dict], device: str, assumed: float | None) -> None:
    """Milliseconds per call, Triton's speedups, and its achieved bandwidth over the assumed one."""
    print(f"{device}: the cost model assumes {assumed / 1e9:,.0f} GB/s for streaming kernels" if assumed else
          f"{device}: no cluster preset describes this GPU, so no assumed bandwidth to compare with")
    columns = [("triton_ms", "triton ms"), ("torch_ms", "torch ms"), ("compiled_ms", "compiled ms"),
               ("x_torch", "x torch"), ("x_compiled", "x compiled"), ("gb_s", "triton GB/s"),
               ("vs_assumed", "meas/assumed")]
    header = f"{'case':<24}{'match':>6}" + "".join(f"{title:>14}" for _, title in columns)
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = "".join("{:>14}".format("-" if r[k] is None else f"{r[k]:.3f}") for k, _ in columns)
        print(f"{r['case']:<24}{'yes' if r['match'] else 'NO':>6}{cells}")


def smoke(a: argparse.Namespace) -> int:
    """Tiny shapes on CPU: Triton in the interpreter against the reference; no timing."""
    from vlac.runtime.kernels import triton_available

    tiny = parse_args(TINY_SHAPES + ["--interpret"] + (["--out", str(a.out)] if a.out else []))
    cases = build_cases(tiny, torch.device("cpu"))
    if not triton_available(torch.empty(0)):
        print("Triton cannot run here (missing, or imported without TRITON_INTERPRET=1): "
              "running the references only")
        for case in cases:
            case.torch_fn(*case.args)
        return 0
    rows, failed = [], []
    for case in cases:
        out = case.triton_fn(*case.args)
        match = outputs_match(out, case.torch_fn(*case.args))
        if not match:
            failed.append(case.name)
        rows.append(result_row(case, match, bytes_moved(case.args, out), {}))
    print(f"interpreter smoke pass: {len(cases) - len(failed)}/{len(cases)} cases match their reference "
          f"(tiny shapes, not timed)")
    for name in failed:
        print(f"  MISMATCH: {name}")
    if a.out:
        write_results(results_file("cpu (Triton interpreter)", tiny, rows), a.out)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.interpret and torch.cuda.is_available():
        return benchmark(args)
    if not args.interpret:
        print("benchmarks/kernels.py needs a CUDA GPU to time kernels; running the --interpret smoke pass")
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton is imported lazily, after this
    return smoke(args)


if __name__ == "__main__":
    sys.exit(main())
