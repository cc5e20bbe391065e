"""The software stack a run trains on: the kernels and overlaps that set its time and memory.

The same model and layout cost differently on Megatron-Core + TransformerEngine (fused norms,
fused SwiGLU/RoPE/cross-entropy, cuDNN attention, TP communication overlapped with GEMMs) and on
a plain PyTorch runtime (eager RMSNorm in fp32, unfused SwiGLU, SDPA's FlashAttention-2). A
`stack:` section names a preset and may override any field; the cost model reads only the
resolved values (`Stack.resolved()`).

Presets (what each stack runs by default, from its own code and docs):
- `vlac`: the program `vlac compile` emits (vlac.runtime) on CUDA: SDPA (FlashAttention-2
  kernels on Hopper), the Triton RMSNorm and RoPE of vlac/runtime/kernels (`select_backend`
  picks them on CUDA; the norm keeps its input and fp32 rstd, RoPE its cos/sin tables), SwiGLU
  as eager ops, fp32 log-softmax cross entropy, plain DTensor tensor parallelism (no overlap),
  DDP/FSDP2 bucketed gradient reduction and parameter prefetch (overlapped),
  torch.distributed.pipelining sends (not overlapped), no torch.compile; residual adds and
  the MLP activation as eager kernels (`fused_elementwise: false`); full recompute may cover
  only k of a pipeline rank's decoder layers (`partial_recompute`: train.py's RECOMPUTE names them).
- `megatron-te`: Megatron-Core with TransformerEngine as NeMo's H100 recipes run it: TE
  cuDNN fused attention, TE LayerNormLinear (norm fused into the next GEMM), bias-SwiGLU and
  RoPE fusions (`bias_swiglu_fusion`, `apply_rope_fusion`), `cross_entropy_loss_fusion`,
  `tp_comm_overlap` (userbuffers), `overlap_grad_reduce`, `overlap_param_gather`,
  `overlap_p2p_comm`; selective recompute reruns the core attention only
  (`recompute_granularity: selective`, whose default `recompute_modules` is `core_attn`); FP8
  GEMMs keep their inputs in FP8 (`fp8_stored_inputs`); full recompute may cover only the first
  k layers of a stage (`partial_recompute`: `--recompute-granularity full --recompute-method block
  --recompute-num-layers k`); the expert all-to-alls are not overlapped with another
  micro-batch (`overlap_moe_expert_parallel_comm` defaults to False; `ep_comm_overlap: true`
  writes a run that sets it).
- `torchtitan-torchao`: torchtitan with torchao float8: SDPA (FlashAttention-2), torch.compile
  per block (inductor fuses the norm, SwiGLU and RoPE element-wise chains), FSDP2 with
  prefetch (overlapped reduce and gather), no async TP by default, eager cross entropy;
  selective recompute is its op-level policy, which keeps matmul and SDPA outputs like vlac's
  (torchtitan also recomputes every second matmul, which is not costed).

What `selective` recompute reruns (`selective_recompute`):
- `elementwise` (vlac.runtime.recompute): inside each block the outputs of GEMMs, attention and
  the router (and the block's input) are kept; norms and element-wise ops are recomputed in
  backward, so they keep nothing and their forward (memory-bound) runs again.
- `core_attention` (Megatron-Core; Korthikanti et al. 2022, "Reducing Activation Recomputation
  in Large Transformer Models", Sec. 4.2): only the attention core (QK^T, softmax, dropout, AV)
  is recomputed: it keeps nothing of its own but its output (the output projection's input),
  so the s x s scores of an unfused kernel (and a fused kernel's fp32 log-sum-exp) go, every
  other activation stays, and the attention forward runs again. Per layer the kept bytes go from
  sbh(34 + 5as/h) to 34sbh. That is Megatron's default `recompute_modules: [core_attn]`;
  `recompute_modules` names others it has: `mla_up_proj` (latent attention's q and kv
  up-projections and RoPE under an output-discarding checkpoint: q, k and the kv up-projection's
  output are not kept, the two GEMMs rerun) and `mlp` (a dense layer's MLP under a checkpoint
  that keeps its input: its GEMM outputs and activation are not kept, its GEMMs rerun; MoE
  layers are Megatron's `moe` module, not this one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from .base import SpecModel

AttentionKernel = Literal["flash2", "flash3", "cudnn", "triton", "unfused"]
FusedOp = Literal["norm", "swiglu", "rope", "cross_entropy"]
ActivationDtype = Literal["bf16", "fp16", "fp32"]
SelectiveRecompute = Literal["elementwise", "core_attention"]
# Megatron-Core's recompute_modules that the cost model knows (transformer_config.py, core_v0.14.0)
RecomputeModule = Literal["core_attn", "mla_up_proj", "mlp"]
ContextParallelScheme = Literal["p2p", "all_gather"]
FUSED_OPS: tuple[str, ...] = ("norm", "swiglu", "rope", "cross_entropy")
STORED_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class ResolvedStack:
    """Every field decided (preset values with the spec's overrides)."""

    preset: str
    attention: str
    fused: tuple[str, ...]
    activation_dtype: str | None  # None: the compute dtype (precision.dtype)
    tp_comm_overlap: bool
    grad_reduce_overlap: bool
    param_gather_overlap: bool
    pp_p2p_overlap: bool
    torch_compile: bool
    # element-wise ops outside the named fusions (residual adds, the activation, the norm's
    # weight gradient) run as fused or compiler-generated kernels; False: one eager kernel each,
    # costed op by op (compiler/stack_costs.py)
    fused_elementwise: bool = True
    # what the `selective` recompute policy reruns: elementwise (norms and element-wise ops, vlac's)
    # or core_attention (Megatron's); see the module docstring
    selective_recompute: str = "elementwise"
    # FP8 GEMMs keep their input for backward in FP8 (TransformerEngine), not in the compute dtype;
    # off for vlac, whose FP8 backend is torchao except TE without tensor parallelism (runtime/precision.py)
    fp8_stored_inputs: bool = False
    # `recompute: full` may cover only part of a pipeline rank's blocks (Megatron's
    # --recompute-method block --recompute-num-layers N); False: every block of a recomputing rank
    partial_recompute: bool = False
    # how context parallelism gets K/V: p2p (a ring of per-step attention kernels merged by
    # log-sum-exp, exchange hidden: TransformerEngine, torch's ring attention) or all_gather (one
    # exposed gather before one attention kernel: Llama 3, vlac's runtime); compiler/context_parallel_costs.py
    context_parallel: str = "p2p"
    # expert all-to-alls of one micro-batch run beside another's compute in the steady 1F1B phase
    # (Megatron-Core's overlap_moe_expert_parallel_comm, default off); compiler/ep_overlap.py
    ep_comm_overlap: bool = False
    # with selective_recompute core_attention: the Megatron-Core modules the selective policy reruns
    # (its recompute_modules, default core_attn); compiler/stack_costs.py
    recompute_modules: tuple[str, ...] = ("core_attn",)

    def fuses(self, op: str) -> bool:
        """Whether `op`'s element-wise chain runs as one kernel: named in `fused`, or generated
        by torch.compile (inductor fuses the norm, SwiGLU and RoPE chains; not the loss)."""
        return op in self.fused or (self.torch_compile and op in ("norm", "swiglu", "rope"))


PRESETS: dict[str, ResolvedStack] = {
    "vlac": ResolvedStack("vlac", "flash2", ("norm", "rope"), None, tp_comm_overlap=False, grad_reduce_overlap=True,
                          param_gather_overlap=True, pp_p2p_overlap=False, torch_compile=False,
                          fused_elementwise=False, partial_recompute=True, context_parallel="all_gather"),
    "megatron-te": ResolvedStack("megatron-te", "cudnn", FUSED_OPS, None, tp_comm_overlap=True,
                                 grad_reduce_overlap=True, param_gather_overlap=True, pp_p2p_overlap=True,
                                 torch_compile=False, selective_recompute="core_attention",
                                 fp8_stored_inputs=True, partial_recompute=True),
    "torchtitan-torchao": ResolvedStack("torchtitan-torchao", "flash2", (), None, tp_comm_overlap=False,
                                        grad_reduce_overlap=True, param_gather_overlap=True, pp_p2p_overlap=False,
                                        torch_compile=True),
}


class Stack(SpecModel):
    """The software stack the run trains on: a preset (vlac, the emitted program; megatron-te;
    torchtitan-torchao) and overrides of what changes cost. The planner costs attention, saved
    activations and communication overlap from these (docs/fidelity.md)."""

    preset: Literal["vlac", "megatron-te", "torchtitan-torchao"] = Field(
        "vlac", description="the training stack whose kernels and overlaps are costed: vlac (the emitted program, "
                            "default), megatron-te (Megatron-Core + TransformerEngine), torchtitan-torchao")
    attention: AttentionKernel | None = Field(
        None, description="attention kernel: flash2, flash3, cudnn, triton (FlashAttention's Triton implementation, "
                          "as MPT's attn_impl: triton; fused, O(s) memory) or unfused (materialises the s x s "
                          "scores); null = the preset's")
    fused: list[FusedOp] | None = Field(
        None, max_length=len(FUSED_OPS), description="ops run as fused kernels, among norm (a norm kernel keeping "
                                                     "its input and per-token statistics, e.g. TE LayerNormLinear), "
                                                     "swiglu, rope, cross_entropy; null = the preset's")
    activation_dtype: ActivationDtype | None = Field(
        None, description="dtype activations are stored in for backward: bf16, fp16 or fp32; null = the "
                                                       "compute dtype (precision.dtype)")
    tp_comm_overlap: bool | None = Field(None, description="tensor-parallel gathers/scatters overlapped with their GEMMs")
    grad_reduce_overlap: bool | None = Field(None, description="data-parallel gradient reduction overlapped with backward")
    param_gather_overlap: bool | None = Field(None, description="ZeRO parameter all-gather overlapped with forward")
    pp_p2p_overlap: bool | None = Field(None, description="pipeline sends/receives overlapped with compute")
    torch_compile: bool | None = Field(None, description="blocks compiled with torch.compile (fuses norm, SwiGLU, "
                                                         "RoPE element-wise chains)")
    fused_elementwise: bool | None = Field(
        None, description="element-wise ops beyond `fused` (residual adds, the MLP activation, the norm's weight "
                          "gradient) run fused (Megatron/TE, torch.compile); false: one eager kernel each, every "
                          "one reading and writing its tensors in HBM; null = the preset's")
    selective_recompute: SelectiveRecompute | None = Field(
        None, description="what the selective recompute policy reruns in backward: elementwise (norms and "
                          "element-wise ops; GEMM, attention and router outputs kept: vlac's runtime) or "
                          "core_attention (only QK^T, softmax and AV: Megatron-Core's, Korthikanti et al. 2022 "
                          "Sec. 4.2); null = the preset's")
    fp8_stored_inputs: bool | None = Field(
        None, description="FP8 GEMMs keep their input for the weight gradient in FP8, 1 byte per element "
                          "(TransformerEngine's Linear/LayerNormLinear/LayerNormMLP: megatron-te), not in the compute "
                          "dtype (torchao's Float8Linear); null = the preset's")
    partial_recompute: bool | None = Field(
        None, description="full recompute may cover only k of the blocks of a pipeline rank, the planner "
                          "choosing the smallest k that fits (Megatron-Core's recompute_method block with "
                          "recompute_num_layers: megatron-te; vlac's runtime checkpoints the layers train.py's "
                          "RECOMPUTE names); false: a recomputing stage reruns every block (torchtitan's full "
                          "activation checkpointing); null = the preset's")
    context_parallel: ContextParallelScheme | None = Field(
        None, description="how context parallelism brings each rank the keys and values of the whole sequence: p2p "
                          "(a ring: one attention kernel per step, the next K/V chunk exchanged behind it, partial "
                          "outputs merged by log-sum-exp; TransformerEngine's cp_comm_type p2p: megatron-te, and "
                          "torch's ring attention: torchtitan-torchao) or all_gather (K/V gathered before one "
                          "attention kernel, the gather exposed: Llama 3's, vlac's runtime); null = the preset's")

    ep_comm_overlap: bool | None = Field(
        None, description="expert-parallel all-to-alls (dispatch, combine) of one micro-batch overlapped with the "
                          "forward or backward compute of another in the steady 1F1B phase, only their excess "
                          "exposed (Megatron-Core's overlap_moe_expert_parallel_comm with delay_wgrad_compute; off "
                          "in every preset, Megatron's default); false: EP_EXPOSED of them exposed; null = the "
                          "preset's")

    recompute_modules: list[RecomputeModule] | None = Field(
        None, min_length=1, description="with selective_recompute core_attention (Megatron-Core's), the modules "
                                        "selective recompute reruns in backward, as Megatron's recompute_modules: "
                                        "core_attn (the attention core), mla_up_proj (latent attention's q and kv "
                                        "up-projections and RoPE, their outputs discarded), mlp (the MLP of dense, "
                                        "non-MoE layers); null = [core_attn], Megatron's default")

    def resolved(self) -> ResolvedStack:
        base = PRESETS[self.preset]
        pick = lambda name: getattr(base, name) if getattr(self, name) is None else getattr(self, name)  # noqa: E731
        fused = base.fused if self.fused is None else tuple(op for op in FUSED_OPS if op in self.fused)
        return ResolvedStack(self.preset, pick("attention"), fused, pick("activation_dtype"),
                             *(bool(pick(f)) for f in ("tp_comm_overlap", "grad_reduce_overlap",
                                                       "param_gather_overlap", "pp_p2p_overlap", "torch_compile",
                                                       "fused_elementwise")),
                             pick("selective_recompute"), bool(pick("fp8_stored_inputs")),
                             bool(pick("partial_recompute")), pick("context_parallel"),
                             bool(pick("ep_comm_overlap")),
                             base.recompute_modules if self.recompute_modules is None else tuple(self.recompute_modules))


__all__ = ["FUSED_OPS", "PRESETS", "STORED_BYTES", "RecomputeModule", "ResolvedStack", "Stack"]
