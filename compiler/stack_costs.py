"""What the software stack (spec.stack) changes in a layer's cost: the bytes each node keeps
for backward, and the attention kernel's rate and memory.

The lowering runs the runtime's PyTorch reference ops on meta tensors (vlac.compiler.lower), so
its saved bytes are those of eager ops: the fp32 RMSNorm keeps fp32 copies, RoPE keeps its fp32
cos/sin rows per call, SwiGLU keeps SiLU's output, cross entropy keeps an fp32 log-softmax over
the vocabulary. A stack that runs these as fused kernels keeps less; the rules below derive each
reduction from what the fused kernel saves (never from a fitted factor):

- norm: a fused RMSNorm (vlac's Triton kernel, TE's LayerNormLinear, Apex) keeps its input and
  output in the activation dtype and an fp32 rstd per token: 2 * act * hidden + 4 bytes per
  token (the eager one keeps fp32 copies besides: ~(8 + act) * hidden). Only the backbone's
  RMSNorms (nodes of kind `norm` in the decoder and the final norm, when backbone.norm is
  rmsnorm); nn.LayerNorm is already one kernel.
- rope: a fused RoPE keeps nothing per layer beyond the rotated q and k (which attention keeps);
  the eager op keeps the fp32 cos and sin rows of its call: 2 * head_dim * 4 bytes per token.
- swiglu: a fused SwiGLU keeps its two inputs (the w1 and w3 outputs) and recomputes SiLU in
  backward, so SiLU's output is not kept (Megatron's bias_swiglu_impl; Korthikanti et al. 2022,
  Sec. 4, count the MLP's activation function input only).
- cross_entropy: a fused (vocabulary-parallel) cross entropy keeps the logits' softmax in the
  activation dtype instead of an fp32 log-softmax: act / 4 of the eager bytes (flash_attn's
  Triton cross entropy keeps the logits and a per-token log-sum-exp). Megatron-Core's
  vocabulary-parallel cross entropy (the `megatron-te` preset, fused or not) computes in fp32 and
  keeps its fp32 softmax (`exp_logits`) for backward: the eager 4 bytes per logit (below).
- activation dtype: every saved byte scales by stored / computed bytes per element.

Megatron's cross entropy moves more than the MEMBOUND_PASSES (4) over its kept fp32 softmax
(16 bytes per logit), counted kernel by kernel from megatron/core/tensor_parallel/
cross_entropy.py (VocabParallelCrossEntropy, _VocabParallelCrossEntropy) and megatron/core/
fusions/fused_cross_entropy.py (`cross_entropy_loss_fusion`: each step one jit_fuser kernel),
in bytes per logit: forward, `calculate_logits_max` reads the BF16 logits and writes their
fp32 copy (`.float()`, 2 + 4), `calculate_predicted_logits` subtracts the max and takes exp in
place (read 4, write 4), `calculate_cross_entropy_loss` divides by the sum in place (`div_`,
read 4, write 4); backward, `calculate_gradients` multiplies by the output gradient in place
(read 4, write 4) and autograd casts the fp32 gradient to the BF16 logits' dtype (the engine's
validate_outputs: read 4, write 2). 36 per logit fused; unfused each in-place op is its own
kernel (`-=`, exp and the max read separately, the sum read again: 52). At a 128K vocabulary
that is several times a decoder layer's element-wise traffic per token.

A fused SwiGLU moves more than 4 passes over what it keeps: its [2f] input (the two GEMM
outputs) is kept by those GEMM nodes, so the rule charges only its f-wide output. Counted from
Megatron's bias_swiglu_impl (megatron/core/fusions/fused_bias_swiglu.py: `swiglu` and
`swiglu_back`, one jit_fuser kernel each; torch.compile's generated kernels do the same): forward
reads the [2f] input and writes the f-wide output (3 f-wide tensors), backward reads the output
gradient and the [2f] input and writes the [2f] input gradient (5): 8 f-wide tensors in the
compute dtype per token (FUSED_SWIGLU_TENSORS), whatever precision the next GEMM keeps its
input in (TE casts it separately, compiler/profile.py's FP8 casts). Against the 4 passes over
its kept output that is 28h more per token for a Llama MLP (f = 3.5h) in BF16, 42h when the
output is kept in FP8.

The embedding's weight gradient is a dense [vocab, hidden] tensor per micro-batch (PyTorch's
embedding backward, aten/src/ATen/native/cuda/EmbeddingBackwardKernel.cu, zero-fills a
grad_weight of the table's size and adds the tokens' rows into it), then added into the step's
gradient: EMBEDDING_GRAD_BYTES per (trainable, TP-local) table element per micro-batch, whatever
the tokens: the zero-fill (2, BF16) and the accumulation, which on Megatron reads the BF16
gradient and reads and writes the fp32 `main_grad` (megatron/core/distributed/
distributed_data_parallel.py, the backward post-hook's `param.main_grad.add_(param.grad.data)`:
2 + 4 + 4) and elsewhere adds into the BF16 .grad (autograd's AccumulateGrad: 2 + 2 + 2).

Eager element-wise kernels (`fused_elementwise: false` and no torch.compile): the cost model
charges memory-bound ops MEMBOUND_PASSES (4) passes over the bytes each keeps for backward
(compiler/profile.py), which an op-by-op count of a fused Megatron/TE layer matches. A stack that
runs each op as its own eager PyTorch kernel moves more, counted per op of the graph (each pass
reads or writes the op's tensor once in HBM):
- residual add (an `add` node of the block itself, hidden x act bytes per token): forward reads
  both operands and writes the sum (3 passes); backward, autograd sums the two gradients of the
  residual stream that forked into the branch and the skip (torch.autograd's InputBuffer::add:
  read 2, write 1). 6 passes; it keeps nothing, so none are counted otherwise.
- an eager LayerNorm/RMSNorm of the backbone: forward reads x and writes y (2), backward reads x
  and dy and writes dx (3), and a second kernel reads dy and x again for the weight (and bias)
  gradient (PyTorch's LaunchGammaBetaBackwardCUDAKernel(dY, X, mean, rstd, ...),
  aten/src/ATen/native/cuda/layer_norm_kernel.cu): 7 passes over hidden x act, 3 beyond the 4.
  A fused RMSNorm is not charged them: vlac's Triton kernel (runtime/kernels/rmsnorm.py) sums
  the weight gradient into per-program partial rows inside the dx kernel, TE's inside its own.
- the MLP activation (GELU, SiLU) keeps its input: forward read + write (2), backward reads the
  input and dy and writes dx (3): 5 passes over its kept bytes, 1 beyond the 4.

Attention kernels (FLOP rates on H100 SXM, BF16, head_dim 128, Shah et al. 2024,
"FlashAttention-3", Fig. 5-7): FlashAttention-3 reaches ~500-660 TFLOP/s forward and ~450-550
backward, cuDNN's fused attention about the same; FlashAttention-2 (PyTorch SDPA's flash backend)
~330-370 forward and ~290-310 backward. As shares of the 989 TFLOP/s BF16 peak over a training
step's forward + backward (backward holds 2.5x the forward FLOPs): flash3/cudnn 0.50,
flash2 0.33. `triton` is FlashAttention's Triton implementation (Tri Dao's flash_attn_triton, the
FlashAttention-1 algorithm), which MPT runs as `attn_impl: triton` (llm-foundry's MPT yamls of
2023, on a pre-MLIR Triton without Hopper's warpgroup MMA): Dao 2023 ("FlashAttention-2",
Sec. 4.1) measures FlashAttention-2 1.3-2.5x faster than it on A100, forward + backward, over
head dims 64/128, causal or not, 512-16K tokens. The rate charged is FlashAttention-2's over the
range's geometric middle, 1.8x (0.18 of the peak): the ends, 1.3x and 2.5x, are the spread the
source allows (docs/fidelity.md gives the error at each). `unfused` attention runs QK^T and PV as batched GEMMs at the GEMM rate over the whole
s x s matrix (causal masking does not skip work), and moves the score matrix through memory: the
scores written and read by softmax, the probabilities written and read by PV (4 passes of
act bytes) forward, twice that backward; it keeps the probabilities for backward (act bytes per
score, Korthikanti et al. 2022's 2as^2b without dropout), which selective recompute drops
(Korthikanti's selective recompute recomputes exactly this part).

Selective recompute as the stack runs it (`selective_recompute`, spec/stack.py): the graph's
`selective` figures are vlac's policy (`elementwise`: GEMM, attention and router outputs kept,
norms and element-wise ops recomputed; vlac.runtime.recompute). Megatron-Core's
(`core_attention`; Korthikanti et al. 2022, Sec. 4.2) recomputes only the attention core: every
other node of the block keeps what it keeps without recompute, and the attention node keeps its
output alone (the output projection's input; q, k and v are the QKV GEMMs' outputs, kept as the
checkpoint's inputs), dropping a fused kernel's fp32 log-sum-exp or an unfused kernel's
probabilities. Its recompute time is the attention forward (compiler/profile.py,
`selective_rerun`); the context-parallel K/V exchange the rerun repeats is taken as hidden
behind it, as in the forward.

FP8 GEMM inputs (`fp8_stored_inputs`, FP8 runs only): TransformerEngine's Linear, LayerNormLinear
and LayerNormMLP keep the FP8 copy of their input for the weight gradient (the quantised
input, 1 byte per element), not the BF16 tensor; torchao's Float8Linear keeps the
high-precision input and casts it again in backward. So on a stack with it, a tensor that only
FP8-eligible GEMMs read (through views) is kept at 1 byte per element: a backbone norm's output
(the QKV and MLP inputs), the attention output (the output projection's input), the MLP
activation's output (the down projection's input). In Korthikanti's GPT layer the GEMM inputs
are 14 of the 32sbh (QKV 2, projection 2, fc1 2, fc2 8), halved in FP8; the attention output
is kept twice, in BF16 by the fused kernel for its own backward (TE's FusedAttnFunc saves q, k, v
and out: the dO . O row sums) and in FP8 by the projection: the layer keeps 27sbh. The
expert GEMMs of a MoE layer too (TE's GroupedLinear keeps its FP8 input for the weight
gradient as Linear does): the dispatched tokens (the expert w1/w3 input, reached through a
slice of the dispatch buffer) and the expert activation's output (the w2 input, through a
dropout of p = 0) are kept at 1 byte per element; the dispatch node's few index bytes are
counted with them (8 bytes per routed copy against 2h of tokens).

Dropless MoE layers on `megatron-te` keep what Megatron-Core's MoE layer keeps, and its selective
recompute reruns the `recompute_modules` it names: compiler/megatron_moe_recompute.py.
"""

from __future__ import annotations

import operator
import re

from vlac.spec.stack import STORED_BYTES, ResolvedStack

from . import megatron_moe_recompute as megatron
from .graph import RECOMPUTE, Graph, NodeCost

# FlashAttention-2 is 1.3-2.5x faster than FlashAttention's Triton implementation (Dao 2023,
# "FlashAttention-2", Sec. 4.1, A100 forward + backward over head dims, masks and lengths): the
# Triton kernel at FlashAttention-2's rate over the range's geometric middle (module docstring)
TRITON_FLASH_SLOWDOWN = (1.3 * 2.5) ** 0.5
ATTENTION_EFF = {"flash2": 0.33, "flash3": 0.50, "cudnn": 0.50, "triton": 0.33 / TRITON_FLASH_SLOWDOWN}
UNFUSED_SCORE_PASSES = 12.0  # 4 forward, 8 backward: reads and writes of the s x s matrix
# Megatron-Core's vocabulary-parallel cross entropy: HBM bytes per logit over forward and backward,
# fused (cross_entropy_loss_fusion) or not (module docstring); the passes charged over its kept fp32
# softmax are the MEMBOUND_PASSES of compiler/profile.py
MEGATRON_CE_BYTES_PER_LOGIT = {True: 36.0, False: 52.0}
# a fused SwiGLU's reads and writes of f-wide tensors per token, forward and backward (module docstring)
FUSED_SWIGLU_TENSORS = 8.0
# the embedding's dense weight gradient per micro-batch, bytes per table element: zero-fill (2) and
# accumulation into fp32 main_grad (Megatron: 10) or into the BF16 .grad (6) (module docstring)
EMBEDDING_GRAD_BYTES = {"megatron": 12.0, "other": 8.0}
FP32_BYTES = 4.0
# eager element-wise kernels: passes over the op's tensor beyond the MEMBOUND_PASSES (4) over
# kept bytes that every stack is charged (module docstring: residual add 6 of 0 counted, eager
# norm 7 of 4, activation 5 of 4)
EAGER_RESIDUAL_PASSES = 6.0
EAGER_NORM_EXTRA_PASSES = 3.0
EAGER_ACTIVATION_EXTRA_PASSES = 1.0
_BLOCK_ROOT = re.compile(r"model\.layers\.\d+")
_RESIDUAL_ADD = re.compile(r"add(_\d+)?")
# FX ops that pass a tensor on without computing (what an FP8 GEMM input may flow through)
_VIEWS = frozenset({"view", "reshape", "transpose", "permute", "contiguous", "flatten", "unflatten"})


class StackCosts:
    """The stack's rules for one model: `saved(node)` gives the node's kept bytes per policy
    under the stack, `unfused_scores(...)` the extra kept bytes of an unfused attention."""

    def __init__(self, stack: ResolvedStack, *, act_bytes: int, hidden: int, head_dim: int, heads: int, norm: str,
                 v_head_dim: int | None = None, rope_head_dim: int | None = None,
                 fp8_inputs: frozenset[str] = frozenset(), top_k: int = 0, latent: bool = False):
        self.stack, self.act_bytes, self.head_dim, self.heads, self.norm = stack, act_bytes, head_dim, heads, norm
        self.top_k = top_k  # routed copies per token of a MoE layer (0: none)
        self.latent = latent  # multi-head latent attention (what mla_up_proj recomputes)
        # latent attention's value heads and rotated channels have widths of their own (else head_dim)
        self.v_head_dim, self.rope_head_dim = v_head_dim or head_dim, rope_head_dim or head_dim
        self.hidden = hidden
        # nodes whose output only FP8 GEMMs read, kept in FP8 (module docstring; fp8_gemm_inputs)
        self.fp8_inputs = fp8_inputs
        stored = STORED_BYTES.get(stack.activation_dtype or "", act_bytes)
        self.dtype_scale = stored / act_bytes
        # the stack's answers to the per-node rules' questions, asked once (the profile asks per node)
        self._fused_rmsnorm = norm == "rmsnorm" and stack.fuses("norm")
        self._fused_rope, self._fused_swiglu = stack.fuses("rope"), stack.fuses("swiglu")
        self._fused_cross_entropy = stack.fuses("cross_entropy")
        self._megatron = stack.preset == "megatron-te"
        self._core_attention = stack.selective_recompute == "core_attention"
        self._megatron_modules = stack.recompute_modules if self._core_attention else ()
        self._eager = not (stack.fused_elementwise or stack.torch_compile)

    @property
    def fused_attention(self) -> bool:
        return self.stack.attention != "unfused"

    @property
    def megatron_modules(self) -> tuple[str, ...]:
        """The Megatron-Core modules selective recompute reruns (recompute_modules), or () when the
        stack's selective policy is vlac's element-wise one."""
        return self._megatron_modules

    def reruns(self, n: NodeCost, moe_block: bool) -> bool:
        """Whether Megatron's selective recompute reruns node `n` whole (the stack's recompute_modules,
        compiler/megatron_moe_recompute.py; `moe_block`: the node's block is a MoE layer)."""
        return megatron.reruns(n, self._megatron_modules, self.latent, moe_block)

    def saved(self, n: NodeCost, tokens: int, moe_block: bool = False) -> dict[str, float]:
        """The node's kept bytes per recompute policy on this stack (`tokens` in the lowered
        micro-batch; `moe_block`: the node's block is a MoE layer)."""
        if not any(n.saved.values()):
            # most nodes keep nothing (views, masks, casts), and every rule caps, scales or re-prices
            # what the eager node keeps: nothing stays nothing (asked per node, so answered first)
            return dict.fromkeys(RECOMPUTE, 0.0)
        kept = self._saved(n, tokens)
        if self._megatron_modules and self.reruns(n, moe_block):
            kept["selective"] = 0.0  # rerun in backward from the checkpoint's input, which its producer keeps
        return kept

    def _saved(self, n: NodeCost, tokens: int) -> dict[str, float]:
        factor, minus = 1.0, 0.0
        st, kind = self.stack, n.kind
        if kind == "norm" and self._fused_rmsnorm and _backbone(n.module):
            fused = (2 * self.act_bytes * self.hidden + FP32_BYTES) * tokens
            kept = {pol: min(n.saved[pol], fused) * self.dtype_scale for pol in RECOMPUTE}
            if self._core_attention and n.in_block:
                kept["selective"] = kept["none"]  # recomputing the attention core reruns no norm
            # TE's LayerNormLinear keeps its input, the rstd and the FP8 copy of its output
            return self._in_fp8(n, kept, tokens) if n.name in self.fp8_inputs else kept
        if kind == "elementwise" and self._fused_rope and n.module.endswith(".rotary") and "rope" in n.name:
            minus = 2 * self.rope_head_dim * FP32_BYTES * tokens
        elif kind == "elementwise" and self._fused_swiglu and n.name.endswith("silu") and n.module.endswith(".mlp"):
            factor = 0.0
        elif self._megatron_cross_entropy(n):
            return {pol: n.saved[pol] for pol in RECOMPUTE}  # its fp32 softmax, whatever the activation dtype
        elif self._megatron and megatron.router_cast(n):
            factor = 0.0  # Megatron's router GEMM keeps its BF16 input (the norm's output) and casts inside
        elif self._megatron and megatron.dropless_experts(n, self.top_k):
            core = megatron.experts_kept(n, tokens, self.top_k, self.act_bytes * self.dtype_scale,
                                         fp8_inputs=bool(self.fp8_inputs), fused_swiglu=self._fused_swiglu)
            # selective (core attention) recomputes none of it: it keeps what it keeps without recompute
            kept = {pol: min(n.saved[pol], core) for pol in RECOMPUTE}
            return {**kept, "selective": kept["none"]} if self._core_attention else kept
        elif kind == "loss" and self._fused_cross_entropy and n.name.startswith("cross_entropy"):
            factor = self.act_bytes / FP32_BYTES
        kept = _kept(n.saved, factor, minus, self.dtype_scale)
        if self._core_attention and n.in_block:
            # only the attention core is recomputed (module docstring): it keeps its output
            out = self.heads * self.v_head_dim * self.act_bytes * tokens * self.dtype_scale
            core = n.kind == "attention" and "core_attn" in st.recompute_modules
            kept["selective"] = min(kept["none"], out) if core else kept["none"]
        return self._in_fp8(n, kept, tokens) if n.name in self.fp8_inputs else kept

    def _in_fp8(self, n: NodeCost, kept: dict[str, float], tokens: int) -> dict[str, float]:
        """`kept` with the node's output (a norm's is hidden wide, attention's heads x head_dim,
        an activation keeps nothing else) at 1 byte per element instead of the stored dtype's."""
        stored = self.act_bytes * self.dtype_scale
        width = {"norm": self.hidden, "attention": self.heads * self.v_head_dim}.get(n.kind)
        out = {pol: b if width is None else min(b, width * stored * tokens) for pol, b in kept.items()}
        if n.kind == "attention":
            # a fused attention kernel keeps its own output for backward (its dO . O row sums) beside
            # the projection's FP8 copy, unless the core attention is recomputed (selective)
            rerun = "core_attn" in self.megatron_modules
            return {pol: b - out[pol] * (1 - 1 / stored) if pol == "selective" and rerun else b + out[pol] / stored
                    for pol, b in kept.items()}
        return {pol: b - out[pol] * (1 - 1 / stored) for pol, b in kept.items()}

    @property
    def eager_elementwise(self) -> bool:
        return self._eager

    def eager_traffic(self, n: NodeCost, tokens: int) -> float:
        """HBM bytes (forward + backward) that eager kernels move for node `n` beyond the
        MEMBOUND_PASSES over its kept bytes that every stack is charged (module docstring);
        0 on a stack that fuses element-wise ops. `tokens` in the lowered micro-batch."""
        if not self._eager or n.kind not in ("elementwise", "norm"):
            return 0.0
        last = n.name.rsplit(".", 1)[-1]
        if n.kind == "elementwise" and _RESIDUAL_ADD.fullmatch(last) and _BLOCK_ROOT.fullmatch(n.module):
            return EAGER_RESIDUAL_PASSES * self._residual_tensor(tokens)
        if n.kind == "norm" and _backbone(n.module) and not self._fused_rmsnorm:
            return EAGER_NORM_EXTRA_PASSES * self._residual_tensor(tokens)
        if n.kind == "elementwise" and last in ("gelu", "silu") and n.module.endswith(".mlp"):
            return EAGER_ACTIVATION_EXTRA_PASSES * n.saved["none"] * self.dtype_scale
        return 0.0

    def _residual_tensor(self, tokens: int) -> float:
        """Bytes of one residual-stream tensor of `tokens` tokens, in the stored dtype."""
        return self.hidden * self.act_bytes * tokens * self.dtype_scale

    def _megatron_cross_entropy(self, n: NodeCost) -> bool:
        """The loss's cross entropy on the megatron-te preset: Megatron-Core's vocabulary-parallel one."""
        return self._megatron and n.kind == "loss" and n.name.startswith("cross_entropy")

    def fused_traffic(self, n: NodeCost, tokens: int, passes: float) -> float:
        """HBM bytes (forward + backward) that a fused kernel moves beyond `passes` over what node
        `n` keeps on this stack (module docstring): Megatron's fp32 cross entropy and a fused
        SwiGLU; 0 for any other node or stack. `tokens` in the lowered micro-batch."""
        if self._megatron_cross_entropy(n):
            logits = n.saved["none"] / FP32_BYTES  # the eager graph's node keeps an fp32 log-softmax
            return logits * (MEGATRON_CE_BYTES_PER_LOGIT[self.stack.fuses("cross_entropy")] - passes * FP32_BYTES)
        if self._megatron and megatron.router_cast(n):
            # the casts still run, forward and again in backward: the traffic of the kept copies stays
            return passes * n.saved["none"] * self.dtype_scale
        if self._fused_swiglu_product(n):
            # the eager product keeps its f-wide output in the compute dtype
            return FUSED_SWIGLU_TENSORS * n.saved["none"] - passes * self.saved(n, tokens)["none"]
        return 0.0

    def _fused_swiglu_product(self, n: NodeCost) -> bool:
        """The product silu(w1 x) * w3 x of a dense SwiGLU MLP that the stack runs as one kernel."""
        return (n.kind == "elementwise" and self._fused_swiglu and n.module.endswith(".mlp")
                and n.name.rsplit(".", 1)[-1] == "mul" and n.saved["none"] > 0)

    def embedding_grad_bytes(self, n: NodeCost) -> float:
        """HBM bytes per micro-batch of an embedding table's dense weight gradient (module
        docstring), before tensor parallelism splits the vocabulary; 0 for other nodes and
        frozen tables."""
        if n.kind != "embedding" or not n.params_embedding:
            return 0.0
        trainable = max(0.0, n.params_embedding - n.params_frozen)
        return trainable * EMBEDDING_GRAD_BYTES["megatron" if self.stack.preset == "megatron-te" else "other"]

    def unfused_scores(self, sq: int, sk: int, micro_batch: int) -> dict[str, float]:
        """Bytes an unfused attention node keeps beyond a fused kernel's, per policy: the
        probabilities (heads x sq x sk per sequence); selective and full recompute drop them."""
        if self.fused_attention:
            return {pol: 0.0 for pol in RECOMPUTE}
        probs = self.heads * sq * sk * micro_batch * self.act_bytes * self.dtype_scale
        return {"none": probs, "selective": 0.0, "full": 0.0}

    def score_traffic(self, sq: int, sk: int) -> float:
        """HBM bytes an unfused attention moves through its score matrix per sequence (forward
        and backward): 0 for a fused kernel, which keeps scores on chip."""
        return 0.0 if self.fused_attention else UNFUSED_SCORE_PASSES * self.heads * sq * sk * self.act_bytes


def fp8_gemm_inputs(graph: Graph) -> frozenset[str]:
    """Names of the decoder-block nodes whose output only FP8-eligible GEMMs read (through views):
    what a stack with `fp8_stored_inputs` keeps in FP8 (module docstring)."""
    out: set[str] = set()
    by_layer: dict[int, dict[str, NodeCost]] = {}
    for n in graph.nodes:
        by_layer.setdefault(n.layer, {})[n.name.rsplit(".", 1)[-1]] = n
    for layer, sig in enumerate(graph.block_of_layer):
        costs = by_layer.get(layer, {})
        for fx_node in graph.blocks[sig].graph.nodes:
            n = costs.get(fx_node.name)
            if n is None or n.kind not in ("norm", "attention", "elementwise") or not n.saved["none"]:
                continue
            readers = _readers(fx_node)
            if readers and all(costs.get(r.name) is not None and costs[r.name].kind == "gemm"
                               and costs[r.name].fp8_eligible for r in readers):
                out.add(n.name)
    return frozenset(out)


def _readers(fx_node) -> list:
    """The nodes that compute with `fx_node`'s output, looking through views (a slice is one), shape
    queries and identities (a dropout of p = 0)."""
    found = []
    for user in fx_node.users:
        if user.op == "call_method" and user.target == "size":
            continue
        if (user.op == "call_method" and user.target in _VIEWS) or _is_slice(user) or _is_identity(user):
            found += _readers(user)
        else:
            found.append(user)
    return found


def _is_slice(fx_node) -> bool:
    """tensor[a:b, ...]: a view; an index by tensor (a gather) is a copy and computes."""
    if fx_node.op != "call_function" or fx_node.target is not operator.getitem:
        return False
    index = fx_node.args[1] if isinstance(fx_node.args[1], tuple) else (fx_node.args[1],)
    return all(isinstance(i, (slice, int)) or i is None or i is Ellipsis for i in index)


def _is_identity(fx_node) -> bool:
    """A module call that returns its input: nn.Identity, or a dropout that drops nothing."""
    if fx_node.op != "call_module" or fx_node.graph.owning_module is None:
        return False
    import torch.nn as nn  # only graphs traced with torch reach here

    module = fx_node.graph.owning_module.get_submodule(fx_node.target)
    return isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout) and module.p == 0)


def _kept(saved: dict[str, float], factor: float, minus: float, scale: float) -> dict[str, float]:
    """Per policy: the node's eager kept bytes times `factor` less `minus` (where it keeps any),
    at least 0, in the stored dtype (`scale`); spelled out per policy, as the profile asks per node."""
    none, selective, full = saved["none"], saved["selective"], saved["full"]
    return {"none": max(0.0, none * factor - (minus if none else 0.0)) * scale,
            "selective": max(0.0, selective * factor - (minus if selective else 0.0)) * scale,
            "full": max(0.0, full * factor - (minus if full else 0.0)) * scale}


assert RECOMPUTE == ("none", "selective", "full"), "_kept spells out each recompute policy"


def _backbone(module: str) -> bool:
    return module.startswith("model.layers.") or module == "model.norm"


__all__ = ["ATTENTION_EFF", "EAGER_ACTIVATION_EXTRA_PASSES", "EMBEDDING_GRAD_BYTES", "FUSED_SWIGLU_TENSORS",
           "MEGATRON_CE_BYTES_PER_LOGIT", "EAGER_NORM_EXTRA_PASSES", "EAGER_RESIDUAL_PASSES",
           "StackCosts", "TRITON_FLASH_SLOWDOWN", "UNFUSED_SCORE_PASSES",
           "fp8_gemm_inputs"]
