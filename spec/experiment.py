"""The root of a spec: one experiment, its cross-field rules and its derived layout."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import Field, model_validator

from .architecture import MoE, Backbone, Fusion, KVCache, Memory
from .base import Identifier, Name, SpecModel, Text
from .modalities import DISCRETE_KINDS, Modality, Vocabulary
from .pretrained import expand_from_hf, mismatches as pretrained_mismatches
from .stack import Stack
from .system import PRESETS, Cluster, Launcher, Parallelism, Precision
from .training import Data, Losses, Optimizer, Train


# Upper bounds on sizes that combine fields (see Experiment._size_rules): far beyond any training
# run (the largest public clusters hold ~1e5 GPUs, batches ~1e4 sequences, vocabularies ~1e6).
MAX_GPUS = 2**20
MAX_BATCH_SEQUENCES = 2**20
MAX_VOCAB = 2**24
MAX_HARDWARE_FIGURE = 1e20  # FLOP/s, bytes or bytes/s of one GPU or link


@dataclass(frozen=True)
class VocabRange:
    modality: str
    offset: int
    size: int


@dataclass(frozen=True)
class VocabLayout:
    """Special tokens first, then one contiguous range per discrete modality in spec order."""

    specials: tuple[str, ...]
    ranges: tuple[VocabRange, ...]
    size: int  # used entries
    padded: int  # rows of the embedding / output head

    aliases: tuple[tuple[str, str], ...] = ()  # (modality, modality whose range it shares)

    def range_of(self, modality: str) -> VocabRange:
        modality = dict(self.aliases).get(modality, modality)
        for r in self.ranges:
            if r.modality == modality:
                return r
        raise KeyError(f"modality {modality!r} has no vocabulary range; ranges: {[r.modality for r in self.ranges]}")

    def special(self, token: str) -> int:
        return self.specials.index(token)



def cluster_rules(cluster: Cluster) -> list[str]:
    """Problems of a cluster's size and figures, as "field: message" lines (fields relative to
    the cluster): the planner enumerates divisors of the world size and divides by every figure."""
    out = []
    world, gpu, net = cluster.world_size, cluster.gpu, cluster.network
    if world > MAX_GPUS:
        out.append(f"nodes: {cluster.nodes} nodes x {cluster.gpus_per_node} GPUs = {world:,} GPUs; "
                   f"vlac plans clusters of at most {MAX_GPUS:,} GPUs")
    for section, figures in (("gpu", gpu), ("network", net)):
        for field in ("bf16_flops", "memory", "memory_bandwidth", "nvlink_bandwidth", "nic_bandwidth",
                      "nvlink_allreduce_busbw"):
            value = getattr(figures, field, None)
            if value is not None and not 0 < value <= MAX_HARDWARE_FIGURE:
                out.append(f"{section}.{field}: {value:g} must be positive (and below {MAX_HARDWARE_FIGURE:g}); "
                           f"write e.g. the preset's {section} figures")
    if not 0 <= gpu.fp8_flops <= MAX_HARDWARE_FIGURE:
        out.append(f"gpu.fp8_flops: {gpu.fp8_flops:g} must be 0 (no FP8) or positive")
    return out


class Experiment(SpecModel):
    name: Name = Field(description="experiment name, used for run folders and job names: letters, digits, . _ - (no '..')")
    description: Text = Field("", description="free text")
    modalities: dict[Identifier, Modality] = Field(max_length=256, description="tokenizers and projectors, by modality name (letters, digits, _), in sequence order")
    vocab: Vocabulary = Field(Vocabulary(), description="unified vocabulary settings")
    backbone: Backbone = Field(Backbone(), description="decoder backbone")
    moe: MoE | None = Field(None, description="mixture-of-experts layout (null = dense)")
    fusion: Fusion = Field(Fusion(), description="how modalities are fused")
    memory: Memory = Field(Memory(), description="segment-recurrence memory")
    kv_cache: KVCache = Field(KVCache(), description="KV cache for generation")
    losses: Losses = Field(Losses(), description="training objectives")
    data: Data = Field(description="data mixture")
    optimizer: Optimizer = Field(Optimizer(), description="optimiser and schedule")
    train: Train = Field(Train(), description="batch, sequence and token budget")
    parallelism: Parallelism = Field(Parallelism(), description="parallel layout: auto or pinned")
    precision: Precision = Field(Precision(), description="compute precision and FP8")
    stack: Stack = Field(Stack(), description="software stack whose kernels and overlaps are costed (preset + overrides)")
    cluster: Cluster = Field(Cluster(), description="the machines")
    launcher: Launcher = Field(Launcher(), description="where the job runs")
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict, description="named partial overrides, e.g. tiny: a CPU-sized version of this experiment")

    @model_validator(mode="before")
    @classmethod
    def _from_hf(cls, data: Any) -> Any:
        return expand_from_hf(data)  # backbone: {from_hf: PATH} fills the fields the checkpoint fixes

    # ---- cross-field rules -------------------------------------------------------------------
    @model_validator(mode="after")
    def _cross_field(self):
        errors: list[str] = []
        names = list(self.modalities)
        bb = self.backbone
        if not self.modalities:
            errors.append("modalities: at least one modality is needed; add e.g. text: {kind: text}")
        if self.train.seq_len > bb.context_length:
            errors.append(f"train.seq_len: {self.train.seq_len} exceeds backbone.context_length {bb.context_length}; "
                          f"raise context_length or lower seq_len")
        for i, comp in enumerate(self.data.mixture):
            unknown = [m for m in comp.modalities if m not in self.modalities]
            if unknown:
                errors.append(f"data.mixture[{i}].modalities: unknown {unknown} in {comp.name!r}; choose from {names}")
            towers = [m for m in comp.modalities if getattr(self.modalities.get(m), "encoder", None) is not None
                      and self.modalities[m].kind == "continuous"]
            if comp.source is not None and towers:
                errors.append(f"data.mixture[{i}].source: {towers} read pixels through a vision tower "
                              f"(modalities.<m>.encoder), which prepared shards do not hold yet (they store features); "
                              f"use a generator for {comp.name!r}, or remove the encoder and prepare the tower's features")
        need = self.tokens_per_sample()
        if need > self.train.seq_len:
            errors.append(f"train.seq_len: {self.train.seq_len} cannot hold one sample of {need} tokens "
                          f"({self._token_breakdown()}); raise seq_len to at least {need} or shrink a modality")
        if self.moe:
            idx = self.moe.moe_layer_indices(bb.layers)
            bad = [i for i in idx if not 0 <= i < bb.layers]
            if bad:
                errors.append(f"moe.layers: indices {bad} are outside 0..{bb.layers - 1}")
            elif not idx:
                errors.append(f"moe.layers: pattern {self.moe.layers!r} selects no layer of {bb.layers}; "
                              f"use \"all\" or a smaller every:N")
        ar = self.losses.ar
        if ar:
            unknown = [m for m in ar.modality_weights if m not in self.modalities]
            if unknown:
                errors.append(f"losses.ar.modality_weights: unknown modalities {unknown}; choose from {names}")
        for field in ("masked", "flow_matching"):
            loss = getattr(self.losses, field)
            if loss and loss.modality not in self.modalities:
                errors.append(f"losses.{field}.modality: unknown modality {loss.modality!r}; choose from {names}")
        for name, m in self.modalities.items():
            other = getattr(m, "shares_vocab_with", None)
            if other is None:
                continue
            target = self.modalities.get(other)
            texts = [n for n, x in self.modalities.items() if x.kind == "text" and n != name and not getattr(x, "shares_vocab_with", None)]
            if target is None or target.kind != "text" or target.shares_vocab_with:
                errors.append(f"modalities.{name}.shares_vocab_with: {other!r} is not a text modality with its own "
                              f"vocabulary; choose from {texts}")
            elif (target.tokenizer, target.vocab_size) != (m.tokenizer, m.vocab_size):
                errors.append(f"modalities.{name}.shares_vocab_with: {name} ({m.tokenizer}, {m.vocab_size}) and {other} "
                              f"({target.tokenizer}, {target.vocab_size}) must use the same tokenizer and vocab_size")
        if self.fusion.context_modalities is not None:
            unknown = [m for m in self.fusion.context_modalities if m not in self.modalities]
            if unknown:
                errors.append(f"fusion.context_modalities: unknown {unknown}; choose from {names}")
            if self.fusion.mode != "late":
                errors.append("fusion.context_modalities: only late fusion reads modalities through cross-attention; "
                              "set fusion.mode: late or remove context_modalities")
        fm = self.losses.flow_matching
        if fm and fm.modality in self.modalities:
            m = self.modalities[fm.modality]
            if m.kind != "continuous":
                errors.append(f"losses.flow_matching.modality: {fm.modality!r} is {m.kind}; flow matching generates "
                              f"continuous patches, so point it at a continuous modality")
            elif m.encoder is not None:
                errors.append(f"losses.flow_matching.modality: {fm.modality!r} is read through a vision tower "
                              f"(modalities.{fm.modality}.encoder); flow matching generates the features themselves, "
                              f"so remove the encoder or point flow matching at another modality")
            elif m.input_dim != fm.patch_dim:
                errors.append(f"losses.flow_matching.patch_dim: {fm.patch_dim} differs from {fm.modality}.input_dim "
                              f"{m.input_dim}; set patch_dim: {m.input_dim}")
        mtp = self.losses.mtp
        if mtp and mtp.depth + 1 >= self.train.seq_len:  # module k's first target is token k+1 ahead
            errors.append(f"losses.mtp.depth: {mtp.depth} leaves no target in a sequence of train.seq_len "
                          f"{self.train.seq_len} tokens; use depth <= {max(1, self.train.seq_len - 2)} or raise seq_len")
        mk = self.losses.masked
        if mk and mk.modality in self.modalities and self.modalities[mk.modality].kind not in DISCRETE_KINDS:
            errors.append(f"losses.masked.modality: {mk.modality!r} is continuous; masked generation predicts "
                          f"discrete tokens, choose one of {[n for n, m in self.modalities.items() if m.kind in DISCRETE_KINDS]}")
        errors += self._precision_rules()
        c = self.losses.contrastive
        if c:
            unknown = [m for m in c.pair if m not in self.modalities]
            if unknown:
                errors.append(f"losses.contrastive.pair: unknown modalities {unknown}; choose from {names}")
        errors += self._size_rules() + self._special_token_rules()
        errors += self._parallel_rules()
        errors += pretrained_mismatches(self)
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def _precision_rules(self) -> list[str]:
        fp8, gpu = self.precision.fp8, self.cluster.gpu
        out = []
        if fp8.enabled and gpu.fp8_flops <= 0:
            out.append(f"precision.fp8.enabled: {gpu.name} has no FP8 tensor cores; disable FP8 or use an H100/H200 preset")
        if fp8.enabled and fp8.recipe == "mxfp8" and self.cluster.preset in PRESETS:  # every preset predates Blackwell
            out.append(f"precision.fp8.recipe: mxfp8 needs Blackwell GPUs, not {gpu.name}; use delayed, current or block")
        return out

    def _size_rules(self) -> list[str]:
        """Bounds on sizes that combine several fields (each field has its own bound too): the
        planner enumerates divisors of the world size and simulates every micro-batch of a step,
        and the model allocates vocabulary x width, so these stay within what can be planned."""
        out = [f"cluster.{line}" for line in cluster_rules(self.cluster)]
        if self.train.global_batch > MAX_BATCH_SEQUENCES:
            out.append(f"train.global_batch_tokens: {self.train.global_batch_tokens:,} tokens are "
                       f"{self.train.global_batch:,} sequences of {self.train.seq_len} per step; at most "
                       f"{MAX_BATCH_SEQUENCES:,} sequences are planned, so lower the batch or raise seq_len")
        vocab = self.vocab_layout().padded
        if vocab > MAX_VOCAB:
            out.append(f"vocab: the unified vocabulary has {vocab:,} entries; at most {MAX_VOCAB:,} are supported, so "
                       f"shrink a modality's vocab_size or codebook_size")
        return out

    def _special_token_rules(self) -> list[str]:
        kinds = {m.kind for m in self.modalities.values()}
        need = ["<pad>", "<bos>", "<eos>"]  # every sample is <bos> ... <eos>, padded with <pad>
        if kinds & {"image", "video", "audio"}:
            need += ["<boi>", "<eoi>"]  # marks around image, video and audio code spans
        if "action" in kinds:
            need += ["<boa>", "<eoa>"]  # marks around action spans
        missing = [t for t in need if t not in self.vocab.special_tokens]
        if missing:
            return [f"vocab.special_tokens: missing {missing}, which the sequence layout of these modalities uses; "
                    f"add them (or remove special_tokens to use the default list)"]
        return []

    def _parallel_rules(self) -> list[str]:
        p, bb, world = self.parallelism, self.backbone, self.cluster.world_size
        out: list[str] = []
        degrees = {k: getattr(p, k) for k in ("dp", "tp", "pp", "cp") if isinstance(getattr(p, k), int)}
        prod = math.prod(degrees.values()) if degrees else 1
        if world % prod:
            out.append(f"parallelism: pinned {degrees} multiply to {prod}, which does not divide the cluster's "
                       f"{world} GPUs; pick degrees whose product divides {world}")
        if isinstance(p.tp, int):
            if bb.heads % p.tp or bb.n_kv_heads % p.tp:
                ok = [d for d in range(1, bb.n_kv_heads + 1) if bb.n_kv_heads % d == 0 and bb.heads % d == 0]
                out.append(f"parallelism.tp: {p.tp} does not divide heads {bb.heads} and kv_heads {bb.n_kv_heads}; use tp among {ok}")
        if isinstance(p.cp, int) and p.cp > 1 and self.train.seq_len % (2 * p.cp):
            out.append(f"parallelism.cp: seq_len {self.train.seq_len} must be divisible by 2*cp = {2 * p.cp} "
                       f"(load-balanced context parallelism); change seq_len or cp")
        if isinstance(p.dp, int) and isinstance(p.microbatch_size, int) and \
                self.train.global_batch % (p.dp * p.microbatch_size):
            out.append(f"parallelism.microbatch_size: the global batch of {self.train.global_batch} sequences does not "
                       f"split into dp {p.dp} x micro-batches of {p.microbatch_size}; change one of them")
        if isinstance(p.pp, int) and p.pp > bb.layers:
            out.append(f"parallelism.pp: {p.pp} exceeds backbone.layers {bb.layers}; use pp <= {bb.layers}")
        if isinstance(p.ep, int):
            if not self.moe:
                if p.ep != 1:
                    out.append("parallelism.ep: expert parallelism needs moe; set ep: 1 or add a moe section")
            elif self.moe.experts % p.ep:
                ok = [d for d in range(1, self.moe.experts + 1) if self.moe.experts % d == 0]
                out.append(f"parallelism.ep: {p.ep} does not divide moe.experts {self.moe.experts}; use ep among {ok}")
        return out

    # ---- derived layout ----------------------------------------------------------------------
    def context_modalities(self) -> tuple[str, ...]:
        """Modalities that late fusion reads through cross-attention (not in the sequence)."""
        if self.fusion.mode != "late":
            return ()
        if self.fusion.context_modalities is not None:
            return tuple(self.fusion.context_modalities)
        return tuple(n for n, m in self.modalities.items() if m.kind in ("image", "video", "continuous"))

    def positions_of(self, name: str) -> int:
        """Sequence positions modality `name` takes in one sample: its tokens (continuous:
        after projection), plus begin/end markers around discrete non-text spans."""
        m = self.modalities[name]
        if m.kind == "continuous":
            return m.positions
        return m.tokens + (0 if m.kind == "text" else 2)

    def tokens_per_sample(self) -> int:
        """Sequence positions one sample of the largest mixture component needs: <bos>, each
        in-sequence modality, <eos>."""
        context = set(self.context_modalities())
        best = 0
        for comp in self.data.mixture:
            n = 2  # <bos> ... <eos>
            for m in comp.modalities:
                if m in self.modalities and m not in context:
                    n += self.positions_of(m)
            best = max(best, n)
        return best

    def _token_breakdown(self) -> str:
        return ", ".join(f"{n}: {m.tokens}" for n, m in self.modalities.items())

    def vocab_layout(self) -> VocabLayout:
        ranges, aliases, offset = [], [], len(self.vocab.special_tokens)
        for name, m in self.modalities.items():
            if m.kind == "text" and m.shares_vocab_with:
                aliases.append((name, m.shares_vocab_with))
            elif m.kind in DISCRETE_KINDS:
                ranges.append(VocabRange(name, offset, m.vocab))
                offset += m.vocab
        mult = self.vocab.pad_to_multiple
        return VocabLayout(self.vocab.special_tokens, tuple(ranges), offset, mult * -(-offset // mult), tuple(aliases))
