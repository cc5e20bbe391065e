"""One FX node -> its NodeCost: kind, parameters, FLOPs, saved bytes per recompute policy, how
it divides over tensor/sequence/context/expert parallelism, and its FP8 eligibility."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from vlac.runtime.layers import MLP
from vlac.spec import Experiment

from .fused_ops import DROPLESS_EXPERTS
from .graph import RECOMPUTE, SELECTIVE_KEEPS, NodeCost
from .node_costs import (CostInterpreter, attention_flops, gemm_flops, is_attention, is_gemm, is_loss, is_norm,
                         multiple_of_16, tensors, unique_bytes)
from .tracing import attention_bias

# FlashAttention's backward: dQ, dK, dV and dP GEMMs (2x the forward) plus the recomputed QK^T
# (0.5x); FlopCounterMode on the unfused math path counts 2x
FLASH_BWD_FACTOR = 2.5


@dataclass(frozen=True)
class Site:
    """Where the graph being annotated sits in the model."""

    exp: Experiment
    tokens: int  # tokens of the micro-batch (MoE capacity reference)
    vocab: int  # padded vocabulary: the dimension of vocabulary-parallel tensors
    in_block: bool = False  # a block's own graph (recompute policies apply)
    decoder: bool = False  # that block is a decoder layer (FP8 candidates)
    after_decoder: bool = False  # a top-level node after the last decoder layer


def node_cost(n: fx.Node, gm: fx.GraphModule, interp: CostInterpreter, site: Site,
              seen_params: set[int]) -> NodeCost | None:
    """The cost record of `n`, or None for nodes without tensors, parameters or cost (asserts,
    size queries, None placeholders, the output)."""
    if n.op == "output":
        return None
    module = gm.get_submodule(n.target) if n.op == "call_module" else None
    ins, out = interp.inputs.get(n.name, []), interp.outputs.get(n.name)
    out_tensors = list(tensors(out))
    params, frozen = _params_of(n, gm, module, seen_params)
    if not out_tensors and not params and not interp.saved.get(n.name):
        return None
    path = module_path(n)
    parts = path.split(".") if path else []
    kind = _kind(n, module, parts)
    owner = _owner(n, gm, module)

    p_dense = p_expert = p_embed = 0
    dropless = DROPLESS_EXPERTS is not None and n.op == "call_function" and n.target is DROPLESS_EXPERTS
    expert = "experts" in parts or dropless
    if isinstance(owner, nn.Embedding) or (parts and parts[-1] == "head"):
        p_embed = params
    elif expert:
        p_expert = params
    else:
        p_dense = params

    flops = bwd = over = 0.0
    mnk, causal, share = None, False, 1.0
    if kind in ("gemm", "router"):
        flops, mnk = gemm_flops(n, module, ins, out)
        bwd = flops * _gradient_gemms(n, module, ins)
    elif kind == "attention":
        flops, causal, share = attention_flops(n, ins)
        bwd = flops * FLASH_BWD_FACTOR if any(t.requires_grad for t in ins[:3]) else 0.0
    if expert and flops and site.exp.moe is not None and n.op == "call_function" and n.target is torch.bmm:
        slots = ins[0].shape[0] * ins[0].shape[1]  # [E, C, d]: every capacity slot is computed
        useful = min(1.0, site.tokens * site.exp.moe.top_k / slots)
        over = (flops + bwd) * (1 - useful)
        flops, bwd = flops * useful, bwd * useful
    elif dropless and flops:  # padding rows of the expert groups, at their bound (gemm_mnk's M)
        routed = ins[1].numel()
        over = (flops + bwd) * (mnk[0] - routed) / routed

    saved = _saved(n, kind, interp, site, out_tensors)
    tp_split, sharded, sp_split = _sharding(n, kind, module, parts, site, ins, out_tensors)
    eligible, reason = _fp8_policy(kind, parts, mnk, site)
    return NodeCost(
        name=n.name, kind=kind, module=path, layer=0, params_dense=p_dense, params_expert=p_expert,
        params_embedding=p_embed, params_frozen=frozen, flops_fwd=flops, flops_bwd=bwd, flops_overcompute=over, saved=saved,
        tp_split=tp_split, act_tp_sharded=sharded, expert=expert, gemm_mnk=mnk, fp8_eligible=eligible,
        fp8_reason=reason, causal=causal, score_fraction=share, in_block=site.in_block, sp_split=sp_split)


def module_path(n: fx.Node) -> str:
    if n.op == "call_module":
        return str(n.target)
    if n.op == "get_attr":
        return str(n.target)
    stack = n.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _owner(n: fx.Node, gm: fx.GraphModule, module: nn.Module | None) -> nn.Module | None:
    """The module a node's parameters belong to (a get_attr's parent module)."""
    if module is not None:
        return module
    if n.op == "get_attr" and "." in str(n.target):
        return gm.get_submodule(str(n.target).rsplit(".", 1)[0])
    return None


def _kind(n: fx.Node, module: nn.Module | None, parts: list[str]) -> str:
    if n.op == "placeholder":
        return "input"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if is_norm(n, module):
        return "norm"
    if is_attention(n):
        return "attention"
    if is_gemm(n, module):
        return "router" if "router" in parts else "gemm"
    if is_loss(n):
        return "loss"
    if n.op == "get_attr":
        return "other"
    return "elementwise"


def _gradient_gemms(n: fx.Node, module: nn.Module | None, ins: list[torch.Tensor]) -> int:
    """Backward GEMMs of a GEMM node: one per operand that needs a gradient (the input's, and
    the weight's unless frozen)."""
    if module is not None:
        return int(ins[0].requires_grad) + int(any(w.requires_grad for w in module.parameters()))
    operands = [ins[0], ins[3]] if n.target is DROPLESS_EXPERTS else ins[:2]  # dropless: h and w1
    return sum(int(t.requires_grad) for t in operands)


def _params_of(n: fx.Node, gm: fx.GraphModule, module: nn.Module | None, seen: set[int]) -> tuple[int, int]:
    """Parameters first used by this node, and how many of them are frozen."""
    tensors_: list[torch.Tensor] = []
    if module is not None:
        tensors_ = list(module.parameters())
    elif n.op == "get_attr":
        obj: Any = gm
        for part in str(n.target).split("."):
            obj = getattr(obj, part)
        if isinstance(obj, nn.Parameter):
            tensors_ = [obj]
    total = frozen = 0
    for t in tensors_:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel()
            frozen += 0 if t.requires_grad else t.numel()
    return total, frozen


def _saved(n: fx.Node, kind: str, interp: CostInterpreter, site: Site, out_tensors: list[torch.Tensor]) -> dict[str, float]:
    none = interp.saved.get(n.name, 0.0)
    if not site.in_block:
        return {p: none for p in RECOMPUTE}
    if kind == "input":  # the block's inputs: checkpointing keeps them
        held = unique_bytes(out_tensors, interp.param_keys)
        return {"none": none, "selective": held, "full": held}
    kept = interp.kept_bytes.get(n.name, 0.0) if kind in SELECTIVE_KEEPS else 0.0
    return {"none": none, "selective": kept, "full": 0.0}


def _module_types(n: fx.Node) -> list[tuple[str, type]]:
    stack = n.meta.get("nn_module_stack") or {}
    return [(path, cls) for path, cls in stack.values()]


def _sharding(n: fx.Node, kind: str, module, parts: list[str], site: Site, ins, outs) -> tuple[bool, bool, bool]:
    """(tp_split, act_tp_sharded, sp_split) of a node; see the graph module docstring."""
    if not site.in_block:
        head = bool(parts) and parts[-1] == "head"
        if isinstance(module, nn.Embedding):
            return module.num_embeddings == site.vocab, False, False  # vocabulary-parallel table
        vocab_sharded = head or any(t.dim() >= 2 and t.shape[-1] == site.vocab for t in list(ins) + list(outs)
                                    if t.is_floating_point())
        return head, vocab_sharded, site.after_decoder and not vocab_sharded
    if n.op == "placeholder":  # hidden states are split along the sequence; masks are not
        return False, False, any(t.requires_grad for t in outs)
    if n.op == "call_function" and n.target is attention_bias:
        return False, False, False
    stack = _module_types(n)
    if any(getattr(cls, "tp_replicated", False) for _, cls in stack):
        return False, False, False  # whole on every tp rank, on the gathered sequence under sp (runtime/mla.py)
    attn = [p for p, cls in stack if cls.__name__.endswith("Attention")]
    if attn:
        rest = _relative(".".join(parts), attn[-1])
        # the sink logits (runtime/attention_sinks.py) are split with the heads, like q/k/v
        return kind in ("gemm", "attention") or rest.startswith("sinks"), not rest.startswith("wo"), True
    mlp = [p for p, cls in stack if issubclass(cls, MLP)]
    if mlp and "experts" not in parts:
        rest = _relative(".".join(parts), mlp[-1])
        return kind == "gemm", rest in ("", "w1", "w3"), True
    return False, False, True


def _relative(path: str, prefix: str) -> str:
    return path[len(prefix) + 1:] if path.startswith(prefix + ".") else ("" if path == prefix else path)


def _fp8_policy(kind: str, parts: list[str], mnk, site: Site) -> tuple[bool, str]:
    if kind == "router":
        return False, "MoE router kept in FP32 (routing decisions are precision-sensitive)"
    if kind == "attention":
        return False, "attention (softmax) kept in BF16"
    if kind == "embedding":
        return False, "embedding lookup kept in BF16 (not a GEMM)"
    if kind == "norm":
        return False, "normalisation kept in BF16/FP32 (not a GEMM)"
    if kind != "gemm":
        return False, ""
    if parts and parts[-1] == "head":
        return False, "output head kept in BF16 (logit precision)"
    if not site.decoder:
        return False, "outside the decoder layers (input projector or encoder GEMM), kept in BF16"
    if mnk is None:
        return False, "GEMM shape not known statically, kept in BF16"
    m, n_, k = mnk
    if not multiple_of_16(n_, k):
        return False, f"GEMM dims N={n_}, K={k} are not multiples of 16"
    return True, "eligible: decoder GEMM with dims multiple of 16"


__all__ = ["FLASH_BWD_FACTOR", "Site", "module_path", "node_cost"]
