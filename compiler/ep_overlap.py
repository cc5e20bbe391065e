"""Expert all-to-alls hidden behind another micro-batch's compute (`stack.ep_comm_overlap`).

Megatron-Core's `overlap_moe_expert_parallel_comm` (model_parallel_config.py: "Overlap EP A2A
communications with independent computations of different micro-batches in 1f1b phase of
pipelining or non-pipelining schedule"; with `delay_wgrad_compute`) runs, in the steady 1F1B
phase, the forward of one micro-batch and the backward of another as one pass over their layers.
Per layer pair (megatron/core/models/common/model_chunk_schedule_plan.py,
`TransformerLayerSchedulePlan.run`, Megatron-LM core_v0.14.0), the communication stream and the
compute stream run side by side in four phases, each waiting for both streams:

    comm:    combine_bwd        | dispatch_fwd  | dispatch_bwd   | (mlp_fwd) | combine_fwd
    compute: attn_fwd+post_attn | mlp_bwd (dgrad) | mlp_bwd_dw   | mlp_fwd   | post_attn_bwd+attn_bwd

So each all-to-all hides behind the compute of its phase and only its excess is exposed (the
hidden part slows that compute by OVERLAP_SLOWDOWN, as every overlapped collective here): the
backward combine behind the forward attention side, the forward dispatch behind the experts'
input-gradient GEMMs, the backward dispatch behind their weight-gradient GEMMs, the forward
combine behind the backward attention side. The MoE side is the layer's router, expert and
shared-expert GEMMs (layer_times' moe_* figures); everything else of the layer (its attention,
the other GEMMs, memory-bound work) is the attention side. Each all-to-all is half of its
direction's expert traffic (dispatch and combine move the same bytes).

Micro-batches outside the steady phase have no partner: the warm-up forwards and the cool-down
backwards of a rank (as many as it holds in flight: cost_arrays.in_flight; all m under GPipe)
run their all-to-alls as without the overlap (EP_EXPOSED). The cost model charges a rank's
micro-batch the overlapped figure plus `unpaired` times that share of the difference.
"""

from __future__ import annotations

import numpy as np

from .data_parallel import hide


def overlapped_ep(lt: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exposed expert communication (with the slowdown of its hidden part) of one micro-batch
    in the steady phase, per key, as (forward share, backward share): the forward combine and
    dispatch are charged to the forward, the backward ones to the backward. `lt`: layer_times."""
    combine_fwd = dispatch_fwd = lt["ep_fwd"] / 2
    combine_bwd = dispatch_bwd = lt["ep_bwd"] / 2
    moe_dgrad = lt["moe_bwd"] - lt["moe_wgrad"]
    attn_side_fwd = lt["gemm_fwd"] - lt["moe_fwd"] + lt["attn_fwd"] + lt["mem_fwd"]
    attn_side_bwd = lt["gemm_bwd"] - lt["moe_bwd"] + lt["attn_bwd"] + lt["mem_bwd"]
    fwd = hide(dispatch_fwd, moe_dgrad) + hide(combine_fwd, attn_side_bwd)
    bwd = hide(combine_bwd, attn_side_fwd) + hide(dispatch_bwd, lt["moe_wgrad"])
    return fwd, bwd


def unpaired_share(held: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The share of a rank's micro-batches that run outside the steady 1F1B phase: its warm-up
    forwards and cool-down backwards, as many as it holds in flight, at most all m."""
    return np.minimum(held, m) / m


__all__ = ["overlapped_ep", "unpaired_share"]
