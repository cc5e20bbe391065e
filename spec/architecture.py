"""The network: backbone decoder, MoE layout, fusion of modalities, memory and KV cache."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import SpecModel
from .latent_attention import LatentAttention
from .latent_attention import refusals as latent_refusals
from .pretrained import PretrainedInit

WINDOW_PATTERNS = ('"all"; "global_every:N" (every N-th layer, from the N-th, keeps full attention and the others '
                   'use the window: Gemma 2 is N=2, Gemma 3 N=6); "from:K" (layers K onward, Qwen2\'s '
                   'max_window_layers); or a list of layer indices')


def layer_pattern(v: str | list[int], form: str, choices: str) -> str | list[int]:
    """`v` unchanged when it is a list of indices or a string matching the regex `form`."""
    if isinstance(v, str) and not re.fullmatch(form, v):
        raise ValueError(f"{v!r} is not a layer pattern; use {choices}")
    return v


def pattern_layers(v: str | list[int], layers: int) -> tuple[int, ...]:
    """The layer indices a WINDOW_PATTERNS pattern names in a decoder of `layers` layers."""
    if isinstance(v, list):
        return tuple(sorted(set(v)))
    if v == "all":
        return tuple(range(layers))
    kind, n = v.split(":")
    if kind == "global_every":
        return tuple(i for i in range(layers) if (i + 1) % int(n))
    return tuple(range(int(n), layers))


class Backbone(SpecModel):
    """A Qwen-style decoder; every choice that distinguishes the classic families is a field."""

    layers: int = Field(24, ge=1, le=256, description="decoder layers (at most 256: twice the deepest published LLM, and planning time grows with depth)")
    hidden: int = Field(2048, gt=0, le=2**17, description="model width d_model")
    heads: int = Field(16, ge=1, le=1024, description="attention (query) heads")
    kv_heads: int | None = Field(None, ge=1, le=1024, description="key/value heads for GQA (default: heads, i.e. MHA)")
    head_dim: int | None = Field(None, gt=0, le=2**14, description="per-head width (default: hidden / heads)")
    ffn_hidden: int | None = Field(None, gt=0, le=2**20, description="dense MLP inner width (default: 4*hidden for GELU, 8/3*hidden rounded to 256 for SwiGLU)")
    mlp: Literal["swiglu", "gelu"] = Field("swiglu", description="MLP type")
    norm: Literal["rmsnorm", "layernorm"] = Field("rmsnorm", description="normalisation layer")
    norm_eps: float = Field(1e-6, gt=0, le=1, description="epsilon of the normalisation")
    positions: Literal["rope", "learned", "none"] = Field("rope", description="position encoding")
    rope_theta: float = Field(1_000_000.0, gt=0, le=1e15, description="RoPE base frequency")
    qk_norm: bool = Field(False, description="RMSNorm on queries and keys (Qwen3, OLMo 2)")
    tied_embeddings: bool = Field(False, description="share input embedding and output head weights")
    context_length: int = Field(4096, ge=1, le=2**24, description="longest sequence the model supports (tokens)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on attention and MLP outputs")
    bias: bool = Field(False, description="biases in linear layers")
    qkv_bias: bool = Field(False, description="biases on the query, key and value projections only (Qwen2)")
    init: PretrainedInit | None = Field(None, description="start from a Hugging Face checkpoint (null = random init); see docs/pretrained.md")
    freeze: bool = Field(False, description="freeze the language model (embedding, blocks, final norm, head): no gradients, not in the optimiser")
    sliding_window: int | None = Field(None, ge=1, le=2**24, description="sliding-window attention: a query sees keys fewer than this many tokens away, itself included (Mistral, Qwen2, Gemma's local layers); null = every earlier token")
    sliding_window_layers: str | list[int] = Field("all", description=f'which layers use sliding_window: {WINDOW_PATTERNS}')
    attention_chunk: int | None = Field(None, ge=1, le=2**24, description="chunked attention: a query sees the earlier keys of its own chunk of this many tokens (positions p // chunk equal; Llama 4's attention_chunk_size, 8192); null = every earlier token")
    attention_chunk_layers: str | list[int] = Field("all", description=f'which layers use attention_chunk: {WINDOW_PATTERNS} (Llama 4 is global_every:4)')
    attention_sinks: bool = Field(False, description="a learned logit per head and layer that joins each softmax's denominator and adds no value (gpt-oss; Xiao et al. 2023's attention sinks)")
    mla: LatentAttention | None = Field(None, description="multi-head latent attention (DeepSeek-V2/V3): keys and values from one low-rank latent per token, queries from another, RoPE on separate channels; null = standard attention (heads, kv_heads, head_dim)")

    @field_validator("sliding_window_layers", "attention_chunk_layers")
    @classmethod
    def _window_layers_form(cls, v):
        return layer_pattern(v, r"all|global_every:[1-9]\d*|from:\d+", WINDOW_PATTERNS)

    @model_validator(mode="after")
    def _heads(self):
        kv = self.kv_heads or self.heads
        if self.heads % kv:
            ok = [d for d in range(1, self.heads + 1) if self.heads % d == 0]
            raise ValueError(f"kv_heads: heads {self.heads} is not divisible by kv_heads {kv}; use kv_heads among {ok}")
        if self.head_dim is None and self.hidden % self.heads:
            near = sorted(sorted((d for d in range(1, 1025) if self.hidden % d == 0), key=lambda d: abs(d - self.heads))[:2])
            heads = f"heads that divide it ({' or '.join(map(str, near))})"
            if self.mla is not None:  # head_dim would silence this but not shape MLA's heads
                m = self.mla
                raise ValueError(f"heads: hidden {self.hidden} is not divisible by heads {self.heads}; with mla the "
                                 f"attention heads are qk_nope_head_dim + qk_rope_head_dim = {m.qk_head_dim} wide "
                                 f"(values v_head_dim = {m.v_head_dim}), so head_dim does not size them, but encoders "
                                 f"and cross-attention take hidden / heads: choose {heads} or change hidden")
            raise ValueError(f"heads: hidden {self.hidden} is not divisible by heads {self.heads}; choose {heads}, "
                             f"or set head_dim")
        # RoPE rotates channel pairs (rotate-half) of every head; MLA rotates its own qk_rope_head_dim
        # channels instead (checked even there), so only standard attention needs an even head
        if self.positions == "rope" and self.mla is None and self.d_head % 2:
            field, fix = (("head_dim", f"use an even head_dim such as {self.d_head + 1}") if self.head_dim
                          else ("heads", f"hidden / heads = {self.hidden} / {self.heads} = {self.d_head}; set an "
                                         f"even head_dim, or heads that leave an even width"))
            raise ValueError(f"{field}: the head width {self.d_head} is odd and positions: rope rotates channel "
                             f"pairs (rotate-half); {fix}, or positions: learned or none")
        return self

    @model_validator(mode="after")
    def _latent_attention(self):
        problems = latent_refusals(self)
        if problems:
            raise ValueError(problems[0])
        return self

    @model_validator(mode="after")
    def _window_layers(self):
        for size, field in (("sliding_window", "sliding_window_layers"), ("attention_chunk", "attention_chunk_layers")):
            v = getattr(self, field)
            if getattr(self, size) is None and v != "all":
                raise ValueError(f"{field}: {v!r} is set but {size} is null; set {size} (tokens) or leave {field} out")
            if isinstance(v, list):
                bad = sorted({i for i in v if not 0 <= i < self.layers})
                if bad:
                    raise ValueError(f"{field}: indices {bad} are outside the {self.layers} layers; use "
                                     f"indices 0..{self.layers - 1}")
        both = sorted(set(self.window_layers()) & set(self.chunk_layers()))
        if both:
            raise ValueError(f"attention_chunk_layers: layers {both[:8]} are also in sliding_window_layers; a layer "
                             f"attends through a sliding window or a chunk, not both: make the two patterns name "
                             f"disjoint layers (lists of indices, say) or set sliding_window or attention_chunk to null")
        return self

    def window_layers(self) -> tuple[int, ...]:
        """Indices of the layers that attend through the sliding window (none without one)."""
        return () if self.sliding_window is None else pattern_layers(self.sliding_window_layers, self.layers)

    def window_at(self, layer: int) -> int:
        """The sliding window (tokens) of decoder layer `layer`; 0 = full causal attention."""
        return self.sliding_window if layer in self.window_layers() else 0

    def chunk_layers(self) -> tuple[int, ...]:
        """Indices of the layers that attend within their chunk (none without attention_chunk)."""
        return () if self.attention_chunk is None else pattern_layers(self.attention_chunk_layers, self.layers)

    def chunk_at(self, layer: int) -> int:
        """The attention chunk (tokens) of decoder layer `layer`; 0 = not chunked."""
        return self.attention_chunk if layer in self.chunk_layers() else 0

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def d_ffn(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        if self.mlp == "gelu":
            return 4 * self.hidden
        return 256 * -(-int(8 * self.hidden / 3) // 256)


class MoE(SpecModel):
    """Mixture-of-experts layout. `layers` picks the MoE layers: "all", "every:N" (every N-th
    layer starting at the N-th, as GShard/Switch), "from:K" (all from layer K on, DeepSeek keeps
    the first K dense), or an explicit list of layer indices."""

    layers: str | list[int] = Field("all", description='which layers are MoE: "all", "every:N", "from:K", or a list of indices')
    experts: int = Field(8, ge=1, le=4096, description="routed experts per MoE layer")
    top_k: int = Field(2, ge=1, le=64, description="experts each token is routed to")
    shared_experts: int = Field(0, ge=0, le=64, description="always-active shared experts (DeepSeekMoE)")
    expert_hidden: int | None = Field(None, gt=0, le=2**20, description="FFN width of one expert (default: backbone ffn width)")
    router: Literal["softmax", "sigmoid"] = Field("softmax", description="router score function, computed in fp32")
    balancing: Literal["aux_loss", "aux_free", "none"] = Field("aux_loss", description="load balancing: Switch auxiliary loss, bias-based aux-loss-free (DeepSeek-V3), or none")
    aux_loss_coef: float = Field(0.01, ge=0, le=1e3, description="coefficient of the Switch load-balancing loss E*sum(f_i*P_i)")
    z_loss_coef: float = Field(0.001, ge=0, le=1e3, description="coefficient of the router z-loss mean(logsumexp^2)")
    bias_update_rate: float = Field(0.001, ge=0, le=1, description="per-step bias update of aux-loss-free balancing")
    capacity_factor: float | None = Field(1.25, gt=0, le=1e3, description="expert capacity = ceil(tokens*top_k/experts*factor); null = dropless")
    load_factor: float = Field(1.0, ge=1, le=4096, description="routing imbalance: the busiest expert's routed tokens over the mean (1.0 = balanced, an assumption; vlac's runtime logs the measured value as load_imbalance). Dropless routing (capacity_factor null) only: it slows the expert GEMMs and all-to-alls of the expert-parallel rank holding that expert (docs/fidelity.md)")
    expert_dropout: float = Field(0.0, ge=0, lt=1, description="dropout inside experts")

    @field_validator("layers")
    @classmethod
    def _layers_form(cls, v):
        return layer_pattern(v, r"all|every:[1-9]\d*|from:\d+", '"all", "every:N", "from:K" or a list of layer indices')

    @model_validator(mode="after")
    def _topk(self):
        if self.top_k > self.experts:
            raise ValueError(f"top_k: {self.top_k} exceeds experts {self.experts}; use top_k <= {self.experts}")
        if self.load_factor > self.experts / self.top_k:  # an expert gets each token at most once
            raise ValueError(f"load_factor: {self.load_factor:g} exceeds experts / top_k = {self.experts / self.top_k:g}, "
                             f"the most one expert can get (every token); write a value from 1 to that")
        return self

    def moe_layer_indices(self, num_layers: int) -> tuple[int, ...]:
        v = self.layers
        if isinstance(v, list):
            return tuple(sorted(set(v)))
        if v == "all":
            return tuple(range(num_layers))
        kind, n = v.split(":")
        n = int(n)
        if kind == "every":
            return tuple(i for i in range(num_layers) if (i + 1) % n == 0)
        return tuple(range(n, num_layers))


class Fusion(SpecModel):
    """Where and how modalities meet the language backbone."""

    mode: Literal["early", "late"] = Field("early", description="early: all tokens in one backbone; late: gated cross-attention to encoded modalities")
    cross_attention_every: int = Field(4, ge=1, le=1024, description="late fusion: a cross-attention layer every k decoder layers")
    gated: bool = Field(True, description="late fusion: tanh gate initialised at zero (Flamingo)")
    freeze_lm: bool = Field(False, description="late fusion: freeze the language model, train the new layers only")
    stream: Literal["shared", "dual"] = Field("shared", description="shared backbone, or dual stream (separate weights per modality group, joint attention)")
    context_modalities: list[str] | None = Field(None, description="late fusion: modalities read through cross-attention instead of sitting in the token sequence (default: every image, video and continuous modality)")
    attention_mask: Literal["causal", "bidirectional_image", "prefix_lm"] = Field("causal", description="causal; bidirectional inside each image span (Transfusion, Show-o); or prefix-LM")


class Memory(SpecModel):
    segment_length: int = Field(0, ge=0, le=2**24, description="tokens per recurrent segment (0 = no segment recurrence)")
    memory_tokens: int = Field(0, ge=0, le=2**20, description="memory slots carried between segments")


class KVCache(SpecModel):
    max_batch: int = Field(1, ge=1, le=2**20, description="sequences decoded at once")
    max_length: int | None = Field(None, ge=1, le=2**24, description="longest cached sequence (default: context length)")
    dtype: Literal["bf16", "fp16", "fp32", "fp8"] = Field("bf16", description="cache element type")
