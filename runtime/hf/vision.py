"""CLIP and SigLIP vision towers from local Hugging Face checkpoints, and back.

vlac's projector and late-fusion families (LLaVA, Qwen-VL, Flamingo) read an image as vision
features: a continuous modality (`signal: vit_features`, `input_dim` = the tower's width) fed
through a projector or resampler. This module computes those features with the pretrained tower,
reproducing transformers' hidden states: inside the model when the modality declares
`encoder: {hf: PATH}` (runtime/encoders.TowerProjector; weights loaded by tower_load.py), or on its
own. It is a pre-norm ViT; the two families differ only in

  CLIP     a class token, LayerNorm before the encoder (`pre_layrnorm`), quick-GELU MLPs, no bias
           on the patch projection; the final LayerNorm belongs to the pooled output only
  SigLIP   no class token, tanh-GELU MLPs, a final LayerNorm on every patch

`features(pixels, layer)` returns the hidden states after encoder layer `layer` (LLaVA-1.5 uses the
penultimate, -2, without the class token: `drop_class_token=True`); calling the tower returns
transformers' (last_hidden_state, pooler_output): CLIP's normed class token, SigLIP's attention-
pooling head (when the checkpoint has one).

The tower is an ordinary trainable module (requires_grad on, gradients reach every weight;
`requires_grad_(False)` freezes it), and `save_vision_tower` writes it back as a folder
transformers' CLIPVisionModel / SiglipVisionModel loads: the family's config and tensor names, so
a fine-tuned tower leaves vlac the way it came in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from safetensors.torch import save_file

from vlac.spec.modalities import tower_config

from .hf_config import config_dtype
from .reader import CheckpointReader

# what a saved tower is to transformers: (model_type, architecture) per family
SAVED_AS = {"clip": ("clip_vision_model", "CLIPVisionModel"), "siglip": ("siglip_vision_model", "SiglipVisionModel")}
ACTIVATIONS = {"quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu}


class EncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int, ffn: int, eps: float, act: str):
        super().__init__()
        self.heads = heads
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(width, eps=eps), nn.LayerNorm(width, eps=eps)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(width, ffn), nn.Linear(ffn, width)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.layer_norm1(x)
        q, k, v = (proj(h).view(b, n, self.heads, -1).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        x = x + self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(self.act(self.fc1(self.layer_norm2(x))))


class AttentionPool(nn.Module):
    """SigLIP's pooled output: one learned probe attends over the patches (one multi-head
    attention with packed q/k/v projections), then a residual MLP on the normed result."""

    def __init__(self, width: int, heads: int, ffn: int, eps: float, act: str):
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.zeros(1, 1, width))
        self.in_proj, self.out_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.layernorm = nn.LayerNorm(width, eps=eps)
        self.fc1, self.fc2 = nn.Linear(width, ffn), nn.Linear(ffn, width)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        w_q, w_kv = self.in_proj.weight.split([d, 2 * d])
        b_q, b_kv = self.in_proj.bias.split([d, 2 * d])
        q = F.linear(self.probe.expand(b, -1, -1), w_q, b_q).view(b, 1, self.heads, -1).transpose(1, 2)
        k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in F.linear(x, w_kv, b_kv).chunk(2, dim=-1))
        h = self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, d))
        h = h + self.fc2(self.act(self.fc1(self.layernorm(h))))
        return h[:, 0]


class VisionTower(nn.Module):
    def __init__(self, cfg: dict, family: str):
        super().__init__()
        width, patch = cfg["hidden_size"], cfg["patch_size"]
        eps = cfg.get("layer_norm_eps", 1e-5)
        self.family = family
        self.config = dict(cfg)  # written back by save_vision_tower
        self.patch_embedding = nn.Conv2d(cfg.get("num_channels", 3), width, patch, stride=patch, bias=family == "siglip")
        patches = (cfg["image_size"] // patch) ** 2
        self.class_embedding = nn.Parameter(torch.zeros(width)) if family == "clip" else None
        self.position_embedding = nn.Embedding(patches + (family == "clip"), width)
        self.pre_norm = nn.LayerNorm(width, eps=eps) if family == "clip" else nn.Identity()
        self.layers = nn.ModuleList(EncoderLayer(width, cfg["num_attention_heads"], cfg["intermediate_size"], eps,
                                                 cfg.get("hidden_act", "quick_gelu")) for _ in range(cfg["num_hidden_layers"]))
        self.post_norm = nn.LayerNorm(width, eps=eps)
        self.head = AttentionPool(width, cfg["num_attention_heads"], cfg["intermediate_size"], eps,
                                  cfg.get("hidden_act", "quick_gelu")) if has_head(cfg, family) else None

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """transformers' (last_hidden_state, pooler_output); SigLIP without a head pools to None."""
        last = self.features(pixels)
        if self.family == "clip":
            return last, self.post_norm(last[:, 0])
        return last, None if self.head is None else self.head(last)

    def unreached(self, layer: int) -> list[nn.Module]:
        """The modules `features(pixels, layer)` never runs: the layers after `layer`, the pooling
        head, and the final norm unless it is SigLIP's after its last layer."""
        last = layer % len(self.layers)
        out = list(self.layers[last + 1:]) + ([self.head] if self.head is not None else [])
        return out + ([self.post_norm] if self.family == "clip" or last < len(self.layers) - 1 else [])

    def embed_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """The patch convolution as the GEMM it is ([B, patches, C*p*p] @ weight.T), so the compiler
        costs it as one; the weight keeps the convolution's shape and name (the checkpoint's)."""
        conv = self.patch_embedding
        b, c, h, w = pixels.shape
        p = conv.kernel_size[0]
        patches = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        return F.linear(patches, conv.weight.flatten(1), conv.bias)

    def features(self, pixels: torch.Tensor, layer: int = -1, drop_class_token: bool = False) -> torch.Tensor:
        """Hidden states [B, tokens, width] after encoder layer `layer` (-1: the last, with SigLIP's
        final norm, as transformers' last_hidden_state)."""
        x = self.embed_patches(pixels)
        if self.class_embedding is not None:
            x = torch.cat([self.class_embedding.expand(x.size(0), 1, -1), x], dim=1)
        x = self.pre_norm(x + self.position_embedding.weight)
        last = layer % len(self.layers)
        for block in self.layers[:last + 1]:
            x = block(x)
        if self.family == "siglip" and last == len(self.layers) - 1:
            x = self.post_norm(x)
        return x[:, 1:] if drop_class_token and self.class_embedding is not None else x


def vision_config(folder: Path) -> tuple[dict, str]:
    """(the vision config, the family) of a CLIP/SigLIP checkpoint folder."""
    return tower_config(folder, str(folder))


def has_head(cfg: dict, family: str) -> bool:
    """SigLIP's attention-pooling head is in the checkpoint unless its config turns it off."""
    return family == "siglip" and cfg.get("vision_use_head", True)


def names(cfg: dict, family: str, prefix: str = "") -> dict[str, str]:
    """vlac parameter name -> checkpoint tensor name, for a tower of config `cfg`."""
    out = {"patch_embedding.weight": "embeddings.patch_embedding.weight",
           "position_embedding.weight": "embeddings.position_embedding.weight",
           "post_norm.weight": "post_layernorm.weight", "post_norm.bias": "post_layernorm.bias"}
    if family == "clip":
        out.update({"class_embedding": "embeddings.class_embedding", "pre_norm.weight": "pre_layrnorm.weight",
                    "pre_norm.bias": "pre_layrnorm.bias"})
    else:
        out["patch_embedding.bias"] = "embeddings.patch_embedding.bias"
    if has_head(cfg, family):
        out.update({f"head.{p}": f"head.{p}" for p in ("probe", "layernorm.weight", "layernorm.bias")})
        out.update({f"head.in_proj.{kind}": f"head.attention.in_proj_{kind}" for kind in ("weight", "bias")})
        out.update({f"head.out_proj.{kind}": f"head.attention.out_proj.{kind}" for kind in ("weight", "bias")})
        out.update({f"head.{fc}.{kind}": f"head.mlp.{fc}.{kind}" for fc in ("fc1", "fc2") for kind in ("weight", "bias")})
    inner = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
             "self_attn.out_proj": "out_proj", "mlp.fc1": "fc1", "mlp.fc2": "fc2", "layer_norm1": "layer_norm1",
             "layer_norm2": "layer_norm2"}
    for i in range(cfg["num_hidden_layers"]):
        for hf, ours in inner.items():
            for kind in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{kind}"] = f"encoder.layers.{i}.{hf}.{kind}"
    return {k: prefix + v for k, v in out.items()}


@torch.no_grad()
def load_vision_tower(path: str | Path) -> VisionTower:
    """The tower of a local CLIP/SigLIP checkpoint (a vision model or a whole CLIP/SigLIP model),
    trainable: its parameters require gradients."""
    folder = Path(path)
    cfg, family = vision_config(folder)
    tower = VisionTower(cfg, family).eval()
    reader = CheckpointReader(folder)
    theirs = names(cfg, family, checkpoint_prefix(reader))
    for name, p in tower.named_parameters():
        p.copy_(reader.read(theirs[name]).to(p.dtype))
    return tower


def checkpoint_prefix(reader: CheckpointReader) -> str:
    """Where the tower's tensors sit: a whole CLIP/SigLIP model nests them under `vision_model.`."""
    return "vision_model." if "vision_model.embeddings.patch_embedding.weight" in reader else ""


def save_vision_tower(tower: VisionTower, out: str | Path) -> list[str]:
    """Write `tower` into folder `out` as transformers' vision model of its family (config.json and
    model.safetensors under the family's names, in the weights' dtype); returns the files written.
    The same tower writes the same bytes."""
    return write_vision_tower({k: p.detach() for k, p in tower.named_parameters()}, tower.config, tower.family, out)


def write_vision_tower(tensors: dict[str, torch.Tensor], cfg: dict, family: str, out: str | Path) -> list[str]:
    """`tensors` (a tower's, under vlac's names: a VisionTower's or read back from a run's checkpoint)
    with the tower's config `cfg`, written as `save_vision_tower` does."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    model_type, architecture = SAVED_AS[family]
    config = {**cfg, "model_type": model_type, "architectures": [architecture],
              "dtype": config_dtype(tensors["post_norm.weight"].dtype)}
    config.pop("torch_dtype", None)  # transformers 4.x's name of `dtype`
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    theirs = names(cfg, family)
    save_file({theirs[k]: v.contiguous().cpu() for k, v in sorted(tensors.items())}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return ["config.json", "model.safetensors"]
