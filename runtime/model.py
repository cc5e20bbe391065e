"""The unified model: every modality's tokens in one sequence through one decoder.

Discrete modalities share one embedding table (the unified vocabulary); continuous signals are
projected (linear, MLP or perceiver resampler) to the model width and added at their reserved
positions; video tokens get camera-pose and timestamp embeddings or go through the asymmetric
spatio-temporal encoder. Late fusion keeps text and actions in the sequence and lets gated
cross-attention layers (before every k-th block) read the other modalities. The compiler traces
exactly this module on the meta device, so the graph it costs is the model that trains.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlac.spec import Experiment
from vlac.spec.media_entries import media_entry_counts

from .batch import continuous_input, is_media, needs_video_inputs, resampler_queries
from .encoders import Projector, SpatioTemporalEncoder, TowerProjector, VisualPositionEmbedding
from .freeze import freeze
from .fusion import GatedCrossAttentionLayer, Resampler, StreamWeights, select_stream
from .heads import ContrastiveHead, FlowHead
from .layers import MLP, make_norm
from .materialize import DeferredInit, materialize, tied_aliases, weights_on_meta
from .masks import attention_mask, document_positions, positions
from .memory import segment_window
from .mla import decoder_attention
from .moe import MoELayer
from .mtp import build_mtp, predict_ahead


class Block(nn.Module):
    """Pre-norm decoder block. forward(x, mask) -> (x, aux, load, dropped); aux/load/dropped are
    None for a dense block. A dual-stream block also holds `media` (StreamWeights) and takes
    `stream` [B, S] (1 on tokens of the second stream). `positions` [B, S]: each token's rotary
    position (packed rows, VLAModel.token_positions); None for 0..S-1."""

    def __init__(self, exp: Experiment, index: int, moe: bool):
        super().__init__()
        bb = exp.backbone
        self.index = index
        self.attn_norm = make_norm(bb, bb.hidden)
        self.attn = decoder_attention(bb, window=bb.window_at(index), chunk=bb.chunk_at(index),
                                      sinks=bb.attention_sinks)
        self.mlp_norm = make_norm(bb, bb.hidden)
        self.is_moe = moe
        self.mlp = MoELayer(bb, exp.moe) if moe else MLP(bb)
        self.media = StreamWeights(bb) if exp.fusion.stream == "dual" else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, stream: torch.Tensor | None = None,
                positions: torch.Tensor | None = None):
        if self.media is not None:
            return self._dual(x, mask, stream, positions)
        x = x + self.attn(self.attn_norm(x), mask, positions)
        if self.is_moe:
            y, aux, load, dropped = self.mlp(self.mlp_norm(x))
            return x + y, aux, load, dropped
        return x + self.mlp(self.mlp_norm(x)), None, None, None

    def _dual(self, x, mask, stream, positions):
        if stream is None:  # e.g. the compiler's per-block trace: both streams still run
            stream = torch.zeros_like(x[..., 0])
        m = self.media
        per_token, per_head = stream.unsqueeze(-1), stream.unsqueeze(-1).unsqueeze(-1)
        start = self.attn.start
        q, k, v = self.attn.project(self.attn_norm(x), start, positions)
        qm, km, vm = m.attn.project(m.attn_norm(x), start, positions)
        y = self.attn.attend(select_stream(per_head, q, qm), select_stream(per_head, k, km),
                             select_stream(per_head, v, vm), mask)
        x = x + select_stream(per_token, self.attn.wo(y), m.attn.wo(y))
        h_media = m.mlp(m.mlp_norm(x))
        if self.is_moe:
            y, aux, load, dropped = self.mlp(self.mlp_norm(x))
            return x + select_stream(per_token, y, h_media), aux, load, dropped
        return x + select_stream(per_token, self.mlp(self.mlp_norm(x)), h_media), None, None, None


class VLAModel(nn.Module):
    """Input: one batch dict (the contract of vlac.runtime.batch), so the traced graph has one
    placeholder. Output dict: logits [B,S,V], hidden [B,S,d] (final-normed), aux_loss (MoE), and
    with MoE expert_load [L_moe,E], dropped_fraction [L_moe], router_entropy [L_moe]; with late
    fusion `media` [B,M,d] / `media_mask` [B,M] and, per media modality, its `pooled.<m>` [B,d];
    with losses.mtp (training) `mtp_logits`, a list of D [B,S,V] (runtime/mtp.py), whose MoE
    blocks' rows follow the decoder's in expert_load etc."""

    def __init__(self, exp: Experiment):
        super().__init__()
        bb = exp.backbone
        self.exp = exp
        layout = exp.vocab_layout()
        self.vocab_padded = layout.padded
        self.embed = nn.Embedding(layout.padded, bb.hidden)
        self.pos_embed = nn.Embedding(bb.context_length, bb.hidden) if bb.positions == "learned" else None
        mods = exp.modalities
        self.continuous = [n for n, m in mods.items() if m.kind == "continuous"]
        self.projectors = nn.ModuleDict({n: _continuous_projector(exp, n) for n in self.continuous})
        self.video = nn.ModuleDict({
            n: SpatioTemporalEncoder(m, bb) if m.encoder is not None else VisualPositionEmbedding(m, bb.hidden)
            for n, m in mods.items() if needs_video_inputs(exp, n) or (m.kind == "video" and is_media(exp, n))})
        self.media_names = [n for n in mods if is_media(exp, n)]
        fusion = exp.fusion
        if fusion.mode == "late":
            self.cross_layers = nn.ModuleDict({
                str(i): GatedCrossAttentionLayer(bb, fusion.gated)
                for i in range(0, bb.layers, fusion.cross_attention_every)})
        moe_layers = set(exp.moe.moe_layer_indices(bb.layers)) if exp.moe else set()
        self.layers = nn.ModuleList(Block(exp, i, i in moe_layers) for i in range(bb.layers))
        self.norm = make_norm(bb, bb.hidden)
        self.head = nn.Linear(bb.hidden, layout.padded, bias=False)
        if bb.tied_embeddings:
            self.head.weight = self.embed.weight
        # multi-token prediction modules (runtime/mtp.py), after the decoder; training only
        self.mtp = build_mtp(exp, lambda i, moe: Block(exp, i, moe)) if exp.losses.mtp else None
        losses = exp.losses
        if losses.contrastive:
            self.contrastive = ContrastiveHead(bb.hidden, losses.contrastive)
        self.flow_name = losses.flow_matching.modality if losses.flow_matching else None
        if self.flow_name:  # a continuous modality with input_dim == patch_dim (checked by the spec)
            self.flow = FlowHead(bb.hidden, losses.flow_matching)
        self.mask_kind = fusion.attention_mask
        self.packed = any(c.source is not None for c in exp.data.mixture)  # batches carry `document` (vlac.data)
        self.segment = (exp.memory.segment_length, exp.memory.memory_tokens)
        self.dual = fusion.stream == "dual"
        # dual stream: text (and the specials, index -1) in the first stream, every other modality in the second
        second_stream = torch.tensor([0.0 if m.kind == "text" else 1.0 for m in mods.values()] + [0.0])
        self.register_buffer("second_stream", second_stream, persistent=False)  # index -1: specials
        self.kv_cache = None  # a generate.KVCache while decoding (set by generate.decoding)

    # ---- inputs ------------------------------------------------------------------------------
    def embed_inputs(self, batch: dict[str, torch.Tensor], start: int = 0) -> torch.Tensor:
        tokens = batch["tokens"]
        x = self.embed(tokens)
        if self.pos_embed is not None:
            pos = self.token_positions(batch, start)
            if pos is None:
                x = x + torch.narrow(self.pos_embed.weight, 0, start, tokens.size(1))
            else:
                x = x + F.embedding(pos, self.pos_embed.weight)
        for name, enc in self.video.items():
            if name in self.media_names:
                continue
            index, present, pose = batch[f"{name}.index"], batch[f"{name}.present"], batch[f"{name}.pose"]
            if isinstance(enc, SpatioTemporalEncoder):
                codes = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))
                x = _add_at(x, enc(codes, pose), index, present)
            else:
                x = _add_at(x, enc(pose).expand(x.size(0), -1, -1), index, present)
        for name in self.continuous:
            if name in self.media_names:
                continue
            out = self._project(name, batch)
            if name == self.flow_name:
                out = out + self.flow.embed_time(batch[f"{name}.flow_time"])
            x = _add_at(x, out, batch[f"{name}.index"], batch[f"{name}.present"])
        return x

    def _project(self, name: str, batch) -> torch.Tensor:
        proj = self.projectors[name]
        feats = batch[continuous_input(self.exp, name)]  # features, or pixels for a vision tower
        if resampler_queries(self.exp, name):
            present = batch[f"{name}.present"][:, :1].expand(-1, self.exp.modalities[name].tokens)
            return proj(feats, present)
        return proj(feats)

    def media_masks(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Late fusion: which entries [B, M_m] of each media modality are present (a resampler's
        queries all are when its input is), from the batch alone."""
        masks = {}
        for name, entries in media_entry_counts(self.exp).items():
            present = batch[f"{name}.present"]
            if resampler_queries(self.exp, name):  # from the spec, not the module: pipeline stages without the projectors ask too
                present = present[:, :1].expand(-1, entries)
            masks[name] = present
        return masks

    def pool_media(self, media: torch.Tensor, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each media modality's mean over its present entries of `media` [B, M, d] ([B, d] each)."""
        pooled, at = {}, 0
        for name, present in masks.items():
            h = media[:, at:at + present.size(1)]
            w = present.to(h.dtype).unsqueeze(-1)
            pooled[name] = (h * w).sum(1) / w.sum(1).clamp_min(1.0)
            at += present.size(1)
        return pooled

    def encode_media(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Late fusion: every media modality to [B, M_m, d] entries, concatenated."""
        parts = []
        masks = self.media_masks(batch)
        for name in self.media_names:
            if name in self.projectors:
                h = self._project(name, batch)
            else:
                h = self.embed(batch[f"{name}.tokens"])
                if name in self.video:
                    enc = self.video[name]
                    pose = batch[f"{name}.pose"]
                    h = enc(h, pose) if isinstance(enc, SpatioTemporalEncoder) else h + enc(pose)
            parts.append(h)
        media = torch.cat(parts, 1)
        return media, torch.cat(list(masks.values()), 1), self.pool_media(media, masks)

    def token_positions(self, batch: dict[str, torch.Tensor], start: int = 0) -> torch.Tensor | None:
        """Positions [B, S] of packed rows, restarting at 0 where each document begins, so a
        document gets the positions (learned or rotary) it has when trained alone, as in
        Megatron's and torchtitan's packed training. None (positions start .. start+S-1) without
        packing, and while decoding past a prompt (start > 0: one document continues)."""
        if self.packed and start == 0:  # decided by the config and the cache: traceable
            return document_positions(batch["document"])
        return None

    def attention_mask(self, batch: dict[str, torch.Tensor], cache=None) -> torch.Tensor | None:
        seg, mem = self.segment
        if cache is None or cache.length == 0:
            document = batch["document"] if self.packed else None  # decided by the config: traceable
            return attention_mask(self.mask_kind, batch.get("span"), batch.get("prefix"), seg, mem, document)
        if seg <= 0:
            return None  # decoding: the new tokens see the whole cache (and each other causally)
        tokens = batch["tokens"]
        q_pos = positions(tokens[0], cache.length)
        k_pos = positions(torch.cat([tokens.new_zeros(cache.length), tokens[0]]))
        allowed = segment_window(q_pos, k_pos, seg, mem) & (k_pos.unsqueeze(0) <= q_pos.unsqueeze(1))
        return allowed.unsqueeze(0).unsqueeze(0)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cache = self.kv_cache
        start = cache.length if cache is not None else 0
        x = embedded = self.embed_inputs(batch, start)
        out: dict[str, torch.Tensor] = {}
        media = media_mask = None
        if self.media_names:
            if cache is not None and cache.media is not None:
                media, media_mask = cache.media
            else:
                media, media_mask, pooled = self.encode_media(batch)
                out.update({"media": media, "media_mask": media_mask})
                out.update({f"pooled.{n}": p for n, p in pooled.items()})
                if cache is not None:
                    cache.media = (media, media_mask)
        mask = self.attention_mask(batch, cache)
        pos = self.token_positions(batch, start)
        stream = self.second_stream[batch["modality"]] if self.dual else None
        aux_total = x.new_zeros((), dtype=torch.float32)
        loads, drops, entropies = [], [], []
        for i, block in enumerate(self.layers):
            if media is not None and str(i) in self.cross_layers:
                x = self.cross_layers[str(i)](x, media, media_mask)
            x, aux, load, dropped = block(x, mask, stream, pos)
            if block.is_moe:  # decided by the config, so the traced graph has no data-dependent branch
                aux_total = aux_total + aux
                loads.append(load)
                drops.append(dropped)
                entropies.append(block.mlp.router_entropy)
        if cache is not None:
            cache.advance(batch["tokens"].size(1))
        elif self.mtp is not None:  # training: the MTP modules read the decoder's output before its norm
            out["mtp_logits"], moe = predict_ahead(self.mtp, self.head, x, embedded, mask, stream, pos)
            for aux, load, dropped, entropy in moe:
                aux_total = aux_total + aux
                loads.append(load)
                drops.append(dropped)
                entropies.append(entropy)
        h = self.norm(x)
        out.update({"logits": self.head(h), "hidden": h, "aux_loss": aux_total})
        if loads:
            out["expert_load"] = torch.stack(loads)
            out["dropped_fraction"] = torch.stack(drops)
            out["router_entropy"] = torch.stack(entropies)
        return out


def _continuous_projector(exp: Experiment, name: str) -> nn.Module:
    m, bb = exp.modalities[name], exp.backbone
    queries = resampler_queries(exp, name)
    proj = Resampler(bb, m.input_dim, queries, m.resampler_layers) if queries else \
        Projector(m.input_dim, bb.hidden, m.projector, m.projector_hidden)
    if m.encoder is None:
        return proj
    from .hf.vision import VisionTower  # a pretrained CLIP/SigLIP tower in front (weights: hf/tower_load.py)
    return TowerProjector(VisionTower(*m.encoder.tower(f"modalities.{name}.encoder.hf")), proj, m.encoder.layer,
                          m.encoder.drop_class_token)


def _add_at(x: torch.Tensor, values: torch.Tensor, index: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Add values [B,n,d] at sequence positions index [B,n]; absent entries add zero (static shapes)."""
    contrib = values * present.unsqueeze(-1).to(values.dtype)
    idx = index.unsqueeze(-1).expand(-1, -1, x.size(-1))
    return x + torch.zeros_like(x).scatter_add(1, idx, contrib.to(x.dtype))


def build_model(exp: Experiment, device: str | torch.device = "cpu", seed: int | None = None,
                deferred: bool = False) -> VLAModel:
    """The model of an experiment: on `cpu`/`cuda`, initialised; on `meta`, shapes only. With
    `deferred=True` its weight matrices stay on the meta device (everything else on `device`) and
    `parallelize` allocates and initialises only this rank's pieces of them, with the values the
    initialised model has (runtime/materialize.py): what a model too large for one device needs.
    With `fusion.freeze_lm` or `backbone.freeze` the language model (embedding, blocks, final
    norm, head) is frozen."""
    device = torch.device(device)
    seed = exp.train.seed if seed is None else seed
    if device.type == "meta":
        with torch.device("meta"):
            model = VLAModel(exp)
    else:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # for the vectors and scalars a constructor draws
        try:
            with weights_on_meta():  # on the CPU: torch.empty of a weight then costs no memory
                model = VLAModel(exp)
            for m in model.modules():
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        finally:
            torch.random.set_rng_state(gen_state)
        model.deferred_init = DeferredInit(seed, exp.backbone.layers, tied_aliases(model))
        if deferred:
            model._apply(lambda t: t if t.is_meta else t.to(device))  # vectors, scalars, buffers
        else:
            materialize([model], model, model.deferred_init, device)
    freeze(model, exp)  # `freeze: true` per component (runtime/freeze.py)
    return model
