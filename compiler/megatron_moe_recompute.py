"""Two rules of Megatron-Core's own that the `megatron-te` stack follows where vlac's traced ops
differ (compiler/stack_costs.py applies them, on that preset only): what its MoE layer keeps for
backward, and which nodes its selective recompute's `recompute_modules` rerun.

Dropless MoE layers on `megatron-te` keep what Megatron-Core's MoE layer keeps (Megatron-LM at
d98e8a6), not the traced ops of vlac's runtime (a padded permuted buffer, SiLU's output, the
fp32 weighted copies its un-permute multiplies by the router weights: ~4.4x more for
DeepSeek-V3). Per routed copy: TE GroupedLinear fc1's input (h; FP8 with `fp8_stored_inputs`),
the input of the weighted SwiGLU that applies the routing probabilities (transformer/moe/
experts.py `bias_act_func` -> fusions/fused_bias_swiglu.py `WeightedSwiGLUFunction`, which saves
its [2f] input in BF16, `activation_func_fp8_input_store` off by default, and the probability,
counted fp32), fc2's input (f; FP8 likewise). The dispatcher's un-permute is called without
probabilities (transformer/moe/token_dispatcher.py, `combine_postprocess`), so it and the
permutation keep index maps only; the all-to-alls keep nothing. Padding rows (at most 15 per
local expert with FP8) are not charged. Selective recompute (core attention) reruns none of it.
Its router (transformer/moe/moe_utils.py, RouterGatingLinearFunction) saves the BF16 input and
weight and casts them to fp32 inside, so the fp32 copies of vlac's runtime router
(F.linear(h.float(), w.float())) are not kept.

`recompute_modules` beyond the attention core (spec/stack.py; Megatron-Core's
transformer_config.py, core_v0.14.0): `mla_up_proj` reruns latent attention's q and kv
up-projections, RoPE and the concatenations of their rotated and plain parts; `mlp` a dense
layer's MLP and its GEMMs (a MoE layer is Megatron's `moe` module, not this one). A rerun node
keeps nothing under selective recompute (stack_costs.StackCosts.saved).
"""

from __future__ import annotations

import re

from .graph import NodeCost

ROUTING_PROBABILITY_BYTES = 4.0  # fp32, per routed copy (module docstring)
# the recompute_modules' regions: latent attention's up-projections and the q/k concatenations of
# their rotated and plain parts; a block's MLP and its GEMMs
_UP_PROJ = re.compile(r"\.attn\.(wq_up|wkv_up)$")
_CONCAT = re.compile(r"cat(_\d+)?")
_DENSE_MLP = re.compile(r"\.mlp(\.(w1|w2|w3|drop))?$")


def reruns(n: NodeCost, modules: tuple[str, ...], latent: bool, moe_block: bool) -> bool:
    """Whether selective recompute with Megatron's `modules` reruns node `n` whole: latent
    attention's up-projections, RoPE and the q/k concatenations under `mla_up_proj` (`latent`: the
    model has latent attention), a dense layer's MLP under `mlp` (`moe_block`: the node's block is
    a MoE layer)."""
    if not modules or not n.in_block:
        return False
    if "mla_up_proj" in modules and latent and (_UP_PROJ.search(n.module) or n.module.endswith(".attn.rotary")
                                                or (n.module.endswith(".attn")
                                                    and _CONCAT.fullmatch(n.name.rsplit(".", 1)[-1]))):
        return True
    return "mlp" in modules and not moe_block and bool(_DENSE_MLP.search(n.module))


def router_cast(n: NodeCost) -> bool:
    """An fp32 cast of a MoE router's input or weight in vlac's traced router, which Megatron's
    router does not keep (module docstring)."""
    return n.kind == "elementwise" and n.module.endswith(".router") and n.name.rsplit(".", 1)[-1].startswith("float")


def dropless_experts(n: NodeCost, top_k: int) -> bool:
    """The dropless experts node (permute, grouped GEMMs, un-permute) of a model routing `top_k`
    copies per token: on megatron-te, Megatron-Core's MoE layer."""
    return n.kind == "gemm" and n.name.endswith("dropless_experts") and top_k > 0 and n.gemm_mnk is not None


def experts_kept(n: NodeCost, tokens: int, top_k: int, stored: float, *, fp8_inputs: bool,
                 fused_swiglu: bool) -> float:
    """Bytes Megatron-Core's dropless MoE layer keeps between its dispatch and combine (module
    docstring) for `tokens` tokens: per routed copy the grouped fc1's input (h), the activation's
    input ((mats - 1) f, the fc1 output), its fp32 routing probability, and fc2's input (f), at
    `stored` bytes per element, the GEMM inputs at 1 where the stack keeps FP8 GEMM inputs
    (`fp8_inputs`) and the GEMM runs FP8; SiLU's output too unless the SwiGLU is fused."""
    _, f, d = n.gemm_mnk
    copies = tokens * top_k
    mats = round(n.flops_fwd / (2.0 * copies * d * f))  # 3 for SwiGLU experts (w1, w3, w2), 2 for GELU
    gemm_input = 1.0 if fp8_inputs and n.fp8_eligible else stored
    activation = (mats - 1) * f * stored + ROUTING_PROBABILITY_BYTES + (0.0 if fused_swiglu or mats < 3 else f * stored)
    return copies * ((d + f) * gemm_input + activation)


__all__ = ["ROUTING_PROBABILITY_BYTES", "dropless_experts", "experts_kept", "reruns", "router_cast"]
