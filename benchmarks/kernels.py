"""Benchmark the Triton kernels against their PyTorch references and torch.compile(reference).

    python benchmarks/kernels.py [--tokens 16384 --hidden 3072 --experts 64 --top-k 4 ...]

With CUDA: checks each kernel against its reference, times Triton, the eager reference and the
compiled reference with CUDA events, prints a table of milliseconds and speedups, and writes
``benchmarks/results/kernels-<device>.json``. Without CUDA there is nothing meaningful to time:
it says so and runs the same cases at tiny shapes in Triton's CPU interpreter as a correctness
pass (references only when Triton is missing). Exit status 1 means a kernel disagreed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Case:
    """One kernel measurement: two implementations of the same function and its inputs."""

    name: str
    triton_fn: Callable[..., Any]
    torch_fn: Callable[..., Any]
    args: tuple  # reused by every call: autograd.grad leaves no state on the leaves


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
    return parser.parse_args(argv)


def with_backward(fn: Callable[..., torch.Tensor], n_grad: int) -> Callable[..., tuple]:
    """fn(*inputs, upstream) -> gradients of the first ``n_grad`` inputs, for fwd+bwd timing."""

    def run(*args):
        *inputs, upstream = args
        return torch.autograd.grad(fn(*inputs), inputs[:n_grad], upstream)

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

    x, q = randn(t, h), randn(batch, seq, heads, a.head_dim)
    return [
        Case("moe_permute", permute(permute_triton), permute(permute_reference), (x,)),
        Case("moe_unpermute", unpermute(unpermute_triton), unpermute(unpermute_reference),
             (randn(rows, h), weights)),
        Case("moe_roundtrip_fwd_bwd",
             with_backward(moe_roundtrip(permute_triton, unpermute_triton), 2),
             with_backward(moe_roundtrip(permute_reference, unpermute_reference), 2),
             (x.detach().requires_grad_(), weights.detach().requires_grad_(), randn(t, h))),
        Case("fp8_cast", lambda x: cast_to_fp8_triton(x, scale),
             lambda x: cast_to_fp8_reference(x, scale), (x,)),
        Case("fp8_blockwise_1x128", lambda x: blockwise_cast_to_fp8_triton(x, (1, 128)),
             lambda x: blockwise_cast_to_fp8_reference(x, (1, 128)), (x,)),
        Case("fp8_blockwise_128x128", lambda x: blockwise_cast_to_fp8_triton(x, (128, 128)),
             lambda x: blockwise_cast_to_fp8_reference(x, (128, 128)), (x,)),
        Case("rms_norm", rms_norm_triton, rms_norm_reference, (x, randn(h))),
        Case("rms_norm_fwd_bwd", with_backward(rms_norm_triton, 2),
             with_backward(rms_norm_reference, 2),
             (x.detach().requires_grad_(), randn(h, grad=True), randn(t, h))),
        Case("apply_rope", rope(apply_rope_triton), rope(apply_rope_reference), (q,)),
        Case("apply_rope_fwd_bwd", with_backward(rope(apply_rope_triton), 1),
             with_backward(rope(apply_rope_reference), 1),
             (q.detach().requires_grad_(), randn(batch, seq, heads, a.head_dim))),
    ]


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


def benchmark(a: argparse.Namespace) -> int:
    """Time every case on the current GPU; print a table and write the JSON results."""
    device = torch.device("cuda")
    rows, all_match = [], True
    for case in build_cases(a, device):
        match = outputs_match(case.triton_fn(*case.args), case.torch_fn(*case.args))
        all_match &= match
        ms = {}
        for label, fn in (("triton", case.triton_fn), ("torch", case.torch_fn),
                          ("compiled", torch.compile(case.torch_fn))):
            try:
                ms[label] = time_cuda_ms(fn, case.args, a.warmup, a.iters)
            except Exception as exc:  # a reference that torch.compile cannot handle is a result too
                print(f"{case.name}/{label} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                ms[label] = None
        rows.append({
            "kernel": case.name, "match": match, **{f"{k}_ms": v for k, v in ms.items()},
            "speedup_vs_torch": ratio(ms["torch"], ms["triton"]),
            "speedup_vs_compiled": ratio(ms["compiled"], ms["triton"]),
        })
    print_table(rows)
    name = torch.cuda.get_device_name(device)
    path = RESULTS_DIR / f"kernels-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"device": name, "torch": torch.__version__, "shapes": vars(a),
                                "results": rows}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if all_match else 1


def ratio(slow: float | None, fast: float | None) -> float | None:
    """How many times faster ``fast`` is; None when either timing failed."""
    return slow / fast if slow and fast else None


def print_table(rows: list[dict]) -> None:
    """Milliseconds per call, and Triton's speedup over the eager and compiled references."""
    columns = [("triton_ms", "triton ms"), ("torch_ms", "torch ms"), ("compiled_ms", "compiled ms"),
               ("speedup_vs_torch", "x torch"), ("speedup_vs_compiled", "x compiled")]
    header = f"{'kernel':<24}{'match':>6}" + "".join(f"{title:>13}" for _, title in columns)
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = "".join("{:>13}".format("-" if r[k] is None else f"{r[k]:.3f}") for k, _ in columns)
        print(f"{r['kernel']:<24}{'yes' if r['match'] else 'NO':>6}{cells}")


def correctness_pass() -> int:
    """Tiny shapes on CPU: Triton in the interpreter against the reference, or references alone."""
    from vlac.runtime.kernels import triton_available

    tiny = parse_args(["--tokens", "24", "--hidden", "40", "--experts", "5", "--top-k", "2",
                       "--align", "4", "--seq-len", "6", "--head-dim", "8"])
    cases = build_cases(tiny, torch.device("cpu"))
    if not triton_available(torch.empty(0)):
        print("Triton cannot run here (missing, or imported without TRITON_INTERPRET=1): "
              "running the references only")
        for case in cases:
            case.torch_fn(*case.args)
        return 0
    failed = [c.name for c in cases if not outputs_match(c.triton_fn(*c.args), c.torch_fn(*c.args))]
    print(f"correctness pass: {len(cases) - len(failed)}/{len(cases)} kernels match their reference")
    for name in failed:
        print(f"  MISMATCH: {name}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if torch.cuda.is_available():
        return benchmark(args)
    print("benchmarks/kernels.py needs a CUDA GPU to time kernels; running a tiny CPU correctness pass")
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton is imported lazily, after this
    return correctness_pass()


if __name__ == "__main__":
    sys.exit(main())
