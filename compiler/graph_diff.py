"""Every cost on which two graphs disagree (the graph cache's and the search's check that a
derived or combined graph equals a direct lowering)."""

from __future__ import annotations

from .graph import RECOMPUTE, Graph


def graph_differences(a: Graph, b: Graph) -> list[str]:
    """Every cost on which two graphs disagree: totals; per layer the parameters, FLOPs, saved
    bytes under each recompute policy; and node by node, each node's costs and each GEMM's name
    and FP8 decision. Empty when equal."""
    out: list[str] = []
    for attr in ("n_layers", "block_of_layer", "micro_batch", "seq_len", "dtype_bytes", "params_total",
                 "params_expert", "params_active", "flops_fwd", "flops_bwd"):
        va, vb = getattr(a, attr), getattr(b, attr)
        if va != vb:
            out.append(f"{attr}: {va} != {vb}")
    la, lb = a.layers(), b.layers()
    if [x.layer for x in la] != [x.layer for x in lb]:
        return out + [f"layer tags: {[x.layer for x in la]} != {[x.layer for x in lb]}"]
    for x, y in zip(la, lb):
        for attr in ("params", "params_expert", "flops_fwd", "flops_bwd", "flops_fp8", "flops_tp_split", "flops_expert"):
            if getattr(x, attr) != getattr(y, attr):
                out.append(f"{x.label} {attr}: {getattr(x, attr)} != {getattr(y, attr)}")
        for p in RECOMPUTE:
            if x.saved[p] != y.saved[p] or x.saved_tp_sharded[p] != y.saved_tp_sharded[p]:
                out.append(f"{x.label} saved[{p}]: {x.saved[p]} != {y.saved[p]}")
    if len(a.nodes) != len(b.nodes):
        return out + [f"node count: {len(a.nodes)} != {len(b.nodes)}"]
    gemm = ("gemm", "router", "attention")
    for x, y in zip(a.nodes, b.nodes):
        vx = {k: v for k, v in vars(x).items() if k not in ("name", "module")}
        vy = {k: v for k, v in vars(y).items() if k not in ("name", "module")}
        if vx != vy or (x.kind in gemm and (x.name, x.module) != (y.name, y.module)):
            changed = sorted(k for k in {*vx, *vy} if vx.get(k) != vy.get(k))
            out.append(f"first differing node: {x.name} vs {y.name} ({', '.join(changed) or 'name'})")
            break
    return out


__all__ = ["graph_differences"]
