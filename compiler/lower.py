"""Lowering: Experiment -> Graph, an FX graph on the meta device with a cost record per node."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from vlac.runtime.batch import example_batch
from vlac.runtime.losses import Objective
from vlac.runtime.model import Block, build_model
from vlac.spec import Experiment

from .graph import RECOMPUTE, Graph, NodeCost
from .node_costs import (NORM_TYPES, CostInterpreter, attention_flops, gemm_flops, is_attention, is_gemm,
                         multiple_of_16)
from .tracing import block_signature, trace

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
FLASH_BWD_FACTOR = 2.5  # dQ, dK, dV, dP GEMMs (2x forward) plus the recomputed QK^T (0.5x)


def lower(exp: Experiment, micro_batch: int = 1, seq_len: int | None = None, dtype: str | None = None) -> Graph:
    """Trace the experiment's model + objective on meta and cost every node for one
    micro-batch of `micro_batch` sequences of `seq_len` tokens in `dtype` (default: the spec's)."""
    t0 = time.perf_counter()
    dt = DTYPES[dtype or exp.precision.dtype]
    s = seq_len or exp.train.seq_len
    model = build_model(exp, "meta").to(dt)
    objective = Objective(model, exp).to("meta")
    top = trace(objective, blocks_as_leaves=True)
    batch = example_batch(exp, micro_batch, s, device="meta", dtype=dt)

    interp = CostInterpreter(top, skip_saving=(Block,))
    with torch.enable_grad():
        interp.run(batch)
    block_nodes = [n for n in top.graph.nodes if n.op == "call_module" and isinstance(top.get_submodule(n.target), Block)]
    first = block_nodes[0] if block_nodes else None
    n_layers = len(block_nodes)
    seen_params: set[int] = set()

    nodes: list[NodeCost] = []
    before = True
    for n in top.graph.nodes:
        if n in block_nodes:
            before = False
            continue
        if n.op in ("output",) or n is first:
            continue
        cost = _node_cost(n, top, interp, exp, layer=-1 if before else n_layers, seen=seen_params,
                          tokens=micro_batch * s, in_block=False)
        if cost is not None:
            nodes.append(cost)

    blocks: dict[str, fx.GraphModule] = {}
    block_costs: dict[str, list[NodeCost]] = {}
    block_of_layer: list[str] = []
    for bn in block_nodes:
        block = top.get_submodule(bn.target)
        sig = block_signature(block)
        block_of_layer.append(sig)
        if sig in blocks:
            continue
        gm = trace(block, blocks_as_leaves=False)
        sub = CostInterpreter(gm)
        x, mask = _block_inputs(interp, bn)
        with torch.enable_grad():
            sub.run(x, mask)
        blocks[sig] = gm
        costs = []
        for n in gm.graph.nodes:
            c = _node_cost(n, gm, sub, exp, layer=0, seen=set(), tokens=micro_batch * s, in_block=True,
                           moe_block=block.is_moe)
            if c is not None:
                costs.append(c)
        block_costs[sig] = costs

    fp8 = exp.precision.fp8
    for i, sig in enumerate(block_of_layer):
        edge = fp8.keep_first_last_bf16 and i in (0, n_layers - 1)
        for c in block_costs[sig]:
            eligible, reason = c.fp8_eligible, c.fp8_reason
            if eligible and edge:
                eligible, reason = False, "first/last decoder layer kept in BF16 (precision.fp8.keep_first_last_bf16)"
            nodes.append(_with(c, name=f"layers.{i}.{c.name}", module=f"layers.{i}.{c.module}".rstrip("."),
                               layer=i, fp8_eligible=eligible, fp8_reason=reason))

    params_total = sum(p.numel() for p in model.parameters())
    params_expert = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    active_frac = exp.moe.top_k / exp.moe.experts if exp.moe else 1.0
    g = Graph(exp.name, top, blocks, block_of_layer, nodes, micro_batch, s, torch.finfo(dt).bits // 8,
              params_total, params_expert, int(round(params_total - params_expert * (1 - active_frac))))
    g.lower_seconds = time.perf_counter() - t0
    return g


def _block_inputs(interp: CostInterpreter, node: fx.Node) -> tuple[Any, Any]:
    args = interp.call_args[node.name]
    x = args[0]
    mask = args[1] if len(args) > 1 else None
    return x.detach().requires_grad_(True), mask


def _module_path(n: fx.Node) -> str:
    if n.op == "call_module":
        return str(n.target)
    if n.op == "get_attr":
        return str(n.target).rsplit(".", 1)[0]
    stack = n.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _kind(n: fx.Node, module: nn.Module | None, path: str) -> str:
    if n.op == "placeholder":
        return "input"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, NORM_TYPES):
        return "norm"
    if "router" in path.split(".") and n.op == "call_function" and n.target is F.linear:
        return "router"
    if is_attention(n):
        return "attention"
    if is_gemm(n, module):
        return "gemm"
    if n.op == "call_function" and n.target is F.cross_entropy:
        return "loss"
    if n.op == "get_attr":
        return "other"
    return "elementwise"


def _node_cost(n: fx.Node, gm: fx.GraphModule, interp: CostInterpreter, exp: Experiment, layer: int,
               seen: set[int], tokens: int, in_block: bool, moe_block: bool = False) -> NodeCost | None:
    if n.op == "output":
        return None
    module = gm.get_submodule(n.target) if n.op == "call_module" else None
    path = _module_path(n)
    parts = path.split(".")
    kind = _kind(n, module, path)
    ins, out = interp.inputs.get(n.name, []), interp.outputs.get(n.name)

    params = _params_of(n, gm, module, seen)
    expert = "experts" in parts
    p_dense = p_expert = p_embed = 0
    if isinstance(module, nn.Embedding) or (module is not None and parts[-1] == "head"):
        p_embed = params
    elif expert:
        p_expert = params
    else:
        p_dense = params

    flops = bwd = over = 0.0
    mnk = None
    if kind in ("gemm", "router"):
        flops, mnk = gemm_flops(n, module, ins, out)
        weights = list(module.parameters()) if module is not None else []
        grads = sum(t.requires_grad for t in ins[:2]) if module is None else \
            int(ins[0].requires_grad) + int(any(w.requires_grad for w in weights))
        bwd = flops * grads
    elif kind == "attention":
        flops = attention_flops(n, ins)
        bwd = flops * FLASH_BWD_FACTOR if ins[0].requires_grad else 0.0
    if expert and flops and exp.moe is not None:
        capacity_slots = ins[0].shape[0] * ins[0].shape[1]  # [E, C, d]
        active = min(1.0, tokens * exp.moe.top_k / capacity_slots)
        over = (flops + bwd) * (1 - active)
        flops, bwd = flops * active, bwd * active

    saved_none = interp.saved.get(n.name, 0.0)
    keep_selective = kind in ("gemm", "attention", "router", "input")
    if in_block:
        full = _bytes(out) if kind == "input" and n.target == "x" else 0.0
        saved = {"none": saved_none, "selective": saved_none if keep_selective else 0.0, "full": full}
    else:
        saved = {p: saved_none for p in RECOMPUTE}

    sharded_attn = parts[0] == "attn" and path != "attn.wo"
    dense_mlp = parts[0] == "mlp" and not moe_block
    sharded_mlp = (dense_mlp or "shared" in parts) and parts[-1] != "w2"
    tp_split = kind == "attention" or (kind == "gemm" and not expert and (parts[0] in ("attn", "mlp") or parts[-1] == "head"))
    eligible, reason = _fp8_policy(kind, parts, mnk, in_block)
    return NodeCost(
        name=n.name, kind=kind, module=path, layer=layer, params_dense=p_dense, params_expert=p_expert,
        params_embedding=p_embed, flops_fwd=flops, flops_bwd=bwd, flops_overcompute=over, saved=saved,
        tp_split=tp_split, act_tp_sharded=in_block and (sharded_attn or sharded_mlp), expert=expert,
        gemm_mnk=mnk, fp8_eligible=eligible, fp8_reason=reason)


def _params_of(n: fx.Node, gm: fx.GraphModule, module: nn.Module | None, seen: set[int]) -> int:
    tensors: list[torch.Tensor] = []
    if module is not None and not isinstance(module, Block):
        tensors = list(module.parameters())
    elif n.op == "get_attr":
        obj = gm
        for part in str(n.target).split("."):
            obj = getattr(obj, part)
        if isinstance(obj, nn.Parameter):
            tensors = [obj]
    total = 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel()
    return total


def _bytes(x: Any) -> float:
    return float(x.numel() * x.element_size()) if isinstance(x, torch.Tensor) else 0.0


def _fp8_policy(kind: str, parts: list[str], mnk, in_block: bool) -> tuple[bool, str]:
    if kind == "router":
        return False, "MoE router kept in FP32 (routing decisions are precision-sensitive)"
    if kind == "attention":
        return False, "attention (softmax) kept in BF16"
    if kind != "gemm":
        return False, ""
    if not in_block:
        if parts[-1] == "head":
            return False, "output head kept in BF16 (logit precision)"
        return False, "input projector kept in BF16 (raw-signal inputs, tiny GEMM)"
    m, n_, k = mnk
    if not multiple_of_16(n_, k):
        return False, f"GEMM dims N={n_}, K={k} are not multiples of 16"
    return True, "eligible: decoder GEMM with dims multiple of 16"


def _with(c: NodeCost, **changes) -> NodeCost:
    return replace(c, **changes)
