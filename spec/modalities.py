"""Per-modality tokenizers and projectors, and the unified vocabulary they share.

Discrete modalities (text, VQ image/video codes, audio codec codes, action bins) own a range of
the unified vocabulary; continuous ones (IMU, camera pose, 3D points, ViT features) are projected
straight into the backbone width and own no vocabulary.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from .base import SpecModel
from .hf_config_file import CheckpointKind, ConfigValue, check_values, read_hf_config, require_keys


class TextTokenizer(SpecModel):
    kind: Literal["text"] = Field("text", description="modality kind (the tag that selects this tokenizer)")
    tokenizer: Literal["byte", "bpe"] = Field("bpe", description="byte-level (vocab 256) or BPE trained on the project's text")
    vocab_size: int = Field(32000, gt=0, le=2**22, description="text vocabulary size (tokens)")
    tokens: int = Field(256, ge=1, le=2**24, description="text tokens per sample in the sequence budget")
    shares_vocab_with: str | None = Field(None, description="another text modality whose tokenizer and vocabulary range this one uses (e.g. answer shares question's)")
    path: str | None = Field(None, min_length=1, description="a trained tokenizer to load instead of fitting one: a `vlac tokenizer train` folder, or a Hugging Face tokenizer.json (file or its folder)")

    @model_validator(mode="after")
    def _byte_vocab(self):
        if self.tokenizer == "byte" and self.vocab_size != 256:
            raise ValueError("vocab_size: a byte tokenizer has vocab_size 256; set vocab_size: 256 or tokenizer: bpe")
        if self.tokenizer == "byte" and self.path is not None:
            raise ValueError("path: a byte tokenizer has nothing to load; set tokenizer: bpe or remove path")
        return self

    @property
    def vocab(self) -> int:
        return self.vocab_size


class ImageVQ(SpecModel):
    kind: Literal["image"] = Field("image", description="modality kind (the tag that selects this tokenizer)")
    image_size: int = Field(256, gt=0, le=2**15, description="square image side (pixels)")
    channels: int = Field(3, gt=0, le=1024, description="input channels")
    patch_size: int = Field(16, gt=0, le=2**15, description="pixels per VQ code along each side")
    codebook_size: int = Field(8192, gt=1, le=2**22, description="number of VQ codes")
    codebook_dim: int = Field(8, gt=0, le=2**14, description="dimension of one code vector")
    commitment_weight: float = Field(0.25, ge=0, le=1e3, description="beta of the VQ commitment loss")
    dead_code_threshold: float = Field(1.0, ge=0, le=1e9, description="a code used fewer times than this per epoch-window is resampled from the batch")
    images: int = Field(1, ge=1, le=1024, description="images per sample")
    path: str | None = Field(None, min_length=1, description="a VQ tokenizer trained by `vlac tokenizer train` (its folder) to load instead of fitting one")

    @model_validator(mode="after")
    def _patch_divides(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"patch_size: image_size {self.image_size} is not divisible by patch_size {self.patch_size}; "
                f"use a patch_size among {_divisors(self.image_size, 4, 64)}")
        return self

    @property
    def tokens(self) -> int:
        return self.images * (self.image_size // self.patch_size) ** 2

    @property
    def vocab(self) -> int:
        return self.codebook_size


class Embedding(SpecModel):
    kind: Literal["fourier", "learned", "none"] = Field("fourier", description="how the signal is embedded")
    num_frequencies: int = Field(16, gt=0, le=1024, description="Fourier frequencies per input dimension")


class VideoEncoder(SpecModel):
    """Asymmetric spatio-temporal encoder: a small per-frame encoder shared by every camera and
    time step, then a larger aggregator across cameras and time."""

    frame_layers: int = Field(2, ge=0, le=1024, description="layers of the per-frame encoder")
    frame_hidden: int = Field(256, gt=0, le=2**17, description="width of the per-frame encoder")
    aggregator_layers: int = Field(4, ge=0, le=1024, description="layers of the cross-camera/cross-time aggregator")
    aggregator_hidden: int = Field(512, gt=0, le=2**17, description="width of the aggregator")


class VideoVQ(ImageVQ):
    kind: Literal["video"] = Field("video", description="modality kind (the tag that selects this tokenizer)")  # type: ignore[assignment]
    cameras: int = Field(1, ge=1, le=256, description="synchronised cameras")
    frames: int = Field(8, ge=1, le=2**16, description="frames per clip per camera")
    fps: float = Field(4.0, gt=0, le=1e4, description="frame rate of the clip (frames per second)")
    temporal_patch: int = Field(1, ge=1, le=2**16, description="frames merged into one code along time")
    encoder: VideoEncoder | None = Field(None, description="asymmetric spatio-temporal encoder; none = codes embedded directly")
    pose_embedding: Embedding = Field(Embedding(kind="fourier"), description="camera-pose embedding added to every visual token")
    time_embedding: Embedding = Field(Embedding(kind="fourier"), description="timestamp embedding added to every visual token")
    freeze: bool = Field(False, description="freeze this modality's encoder and pose/time embeddings: no gradients, not in the optimiser")

    @model_validator(mode="after")
    def _temporal_divides(self):
        if self.frames % self.temporal_patch:
            raise ValueError(f"temporal_patch: frames {self.frames} is not divisible by temporal_patch {self.temporal_patch}; "
                             f"use a temporal_patch among {_divisors(self.frames, 1, self.frames)}")
        return self

    @property
    def tokens(self) -> int:
        per_frame = (self.image_size // self.patch_size) ** 2
        return self.cameras * (self.frames // self.temporal_patch) * per_frame


class AudioCodec(SpecModel):
    kind: Literal["audio"] = Field("audio", description="modality kind (the tag that selects this tokenizer)")
    codebooks: int = Field(4, ge=1, le=256, description="residual codebooks per frame")
    codebook_size: int = Field(1024, gt=1, le=2**22, description="codes per codebook")
    frame_rate_hz: float = Field(12.5, gt=0, le=1e5, description="codec frames per second")
    seconds: float = Field(2.0, gt=0, le=86400, description="audio seconds per sample")

    @property
    def tokens(self) -> int:
        return self.codebooks * math.ceil(self.frame_rate_hz * self.seconds)

    @property
    def vocab(self) -> int:
        return self.codebooks * self.codebook_size


class ActionBins(SpecModel):
    """RT-2 style: each action dimension is discretised into `bins` uniform bins over [low, high]."""

    kind: Literal["action"] = Field("action", description="modality kind (the tag that selects this tokenizer)")
    dims: int = Field(7, ge=1, le=2**12, description="action dimensions")
    bins: int = Field(256, ge=2, le=2**16, description="bins per dimension (shared vocabulary across dimensions)")
    horizon: int = Field(1, ge=1, le=2**12, description="future steps predicted per sample")
    # bounded so that high - low and the bin arithmetic stay finite (1e300 - -1e300 is inf)
    low: float = Field(-1.0, ge=-1e9, le=1e9, description="lower bound of the action range")
    high: float = Field(1.0, ge=-1e9, le=1e9, description="upper bound of the action range")

    @model_validator(mode="after")
    def _range(self):
        if self.high <= self.low:
            raise ValueError(f"high: {self.high} must exceed low {self.low}")
        return self

    @property
    def tokens(self) -> int:
        return self.dims * self.horizon

    @property
    def vocab(self) -> int:
        return self.bins


# model_type of a CLIP/SigLIP checkpoint (a vision model, or a whole image-text model) -> family
TOWER_FAMILIES = {"clip_vision_model": "clip", "clip": "clip", "siglip_vision_model": "siglip", "siglip": "siglip"}


class VisionEncoder(SpecModel):
    """A pretrained CLIP/SigLIP vision tower in front of the projector (LLaVA): the batch carries
    normalised pixels and the tower computes the features the projector reads."""

    hf: str = Field(min_length=1, description="folder of a local CLIP or SigLIP checkpoint (config.json + *.safetensors; a "
                                              "vision model or a whole CLIP/SigLIP model); see docs/pretrained.md")
    layer: int = Field(-2, ge=-1024, le=1023, description="encoder layer whose hidden states are the features (-1 the last, "
                                                         "-2 the penultimate as in LLaVA-1.5; 0 the first)")
    drop_class_token: bool = Field(True, description="leave CLIP's class token out of the features (LLaVA); SigLIP has none")
    freeze: bool = Field(True, description="keep the tower's pretrained weights (LLaVA): no gradients, not in the optimiser")

    def tower(self, field: str = "encoder.hf") -> tuple[dict[str, Any], str]:
        """(the tower's vision config, its family) from the checkpoint's config.json; ValueError
        naming `field` when the folder is not a CLIP/SigLIP checkpoint."""
        return tower_config(self.hf, field)

    def tokens(self, cfg: dict[str, Any], family: str) -> int:
        """Feature vectors per image: one per patch, plus CLIP's class token unless dropped."""
        return (cfg["image_size"] // cfg["patch_size"]) ** 2 + (family == "clip" and not self.drop_class_token)


def anchor_encoder_paths(data: Any, base: str | Path) -> Any:
    """`data` with each relative `modalities.<m>.encoder.hf` made absolute against `base` (the spec
    file's folder), as backbone.from_hf and data paths are; other input passes through."""
    mods = data.get("modalities") if isinstance(data, dict) else None
    if not isinstance(mods, dict):
        return data
    out = dict(mods)
    for name, m in mods.items():
        enc = m.get("encoder") if isinstance(m, dict) else None
        if isinstance(enc, dict) and isinstance(enc.get("hf"), str) and not Path(enc["hf"]).expanduser().is_absolute():
            out[name] = {**m, "encoder": {**enc, "hf": str((Path(base) / enc["hf"]).resolve())}}
    return {**data, "modalities": out}


# the tower config's keys vlac reads: sizes, bounded so that the arithmetic on them stays small
TOWER_VALUES = {key: ConfigValue("int", 1, 2**20) for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                              "intermediate_size", "image_size", "patch_size")}
VISION_TOWER = CheckpointKind(tuple(TOWER_FAMILIES), " of a CLIP or SigLIP model", "a vision tower vlac reads",
                              f"a CLIP or SigLIP checkpoint (model_type one of {', '.join(TOWER_FAMILIES)})")


def tower_config(path: str | Path, field: str) -> tuple[dict[str, Any], str]:
    cfg, cfg_file = read_hf_config(Path(path).expanduser(), field, VISION_TOWER, shown=path)
    vision = cfg.get("vision_config", cfg)
    check_values(vision, {}, field, cfg_file, "vision_config." if vision is not cfg else "")  # a mapping
    require_keys(vision, TOWER_VALUES, field, cfg_file, " of its vision config")
    check_values(vision, TOWER_VALUES, field, cfg_file, "vision_config." if vision is not cfg else "")
    return vision, TOWER_FAMILIES[cfg["model_type"]]


class ContinuousProjector(SpecModel):
    kind: Literal["continuous"] = Field("continuous", description="modality kind (the tag that selects this tokenizer)")
    signal: Literal["imu", "camera_intrinsics", "camera_extrinsics", "points3d", "vit_features", "proprio"] = Field(
        "imu", description="what the signal is")
    input_dim: int = Field(6, gt=0, le=2**17, description="features per input vector")
    tokens: int = Field(16, ge=1, le=2**24, description="input vectors per sample (e.g. ViT patches)")
    projector: Literal["linear", "mlp", "resampler"] = Field("mlp", description="projection into the backbone width: linear, 2-layer MLP (LLaVA), or perceiver resampler (Qwen-VL, Flamingo)")
    projector_hidden: int | None = Field(None, gt=0, le=2**17, description="hidden width of an MLP projector (default: backbone width)")
    resampler_queries: int = Field(64, ge=1, le=2**16, description="resampler: learned queries, i.e. sequence positions the signal occupies")
    resampler_layers: int = Field(1, ge=1, le=1024, description="resampler: cross-attention layers")
    freeze: bool = Field(False, description="freeze this modality's projector (or resampler): no gradients, not in the optimiser")
    encoder: VisionEncoder | None = Field(None, description="vit_features: a pretrained CLIP/SigLIP tower computes the features from "
                                                            "pixels in the run (null = the batch carries the features)")

    @model_validator(mode="after")
    def _encoder_fits(self):
        if self.encoder is None:
            return self
        if self.signal != "vit_features":
            raise ValueError(f"encoder: a vision tower reads images, but signal is {self.signal!r}; "
                             f"set signal: vit_features or remove encoder")
        cfg, family = self.encoder.tower()
        where = f"the tower's config ({Path(self.encoder.hf) / 'config.json'})"
        layers = cfg["num_hidden_layers"]
        errors = []
        if not -layers <= self.encoder.layer < layers:
            errors.append(f"encoder.layer: {self.encoder.layer} is not a layer of the tower's {layers}; "
                          f"use one of {-layers}..{layers - 1} (-2, the penultimate, as LLaVA-1.5)")
        if self.input_dim != cfg["hidden_size"]:
            errors.append(f"input_dim: {self.input_dim} differs from hidden_size {cfg['hidden_size']} in {where}; "
                          f"set input_dim: {cfg['hidden_size']}")
        want = self.encoder.tokens(cfg, family)
        if self.tokens != want:
            patches = (cfg["image_size"] // cfg["patch_size"]) ** 2
            why = f"{patches} patches of {cfg['patch_size']} px in {cfg['image_size']} px images"
            why += "" if family == "siglip" else (" without the class token" if self.encoder.drop_class_token
                                                  else " plus the class token")
            errors.append(f"tokens: {self.tokens} differs from the {want} feature vectors the tower gives ({why}, "
                          f"{where}); set tokens: {want}")
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @property
    def positions(self) -> int:
        """Sequence positions (or cross-attention keys) after projection."""
        return self.resampler_queries if self.projector == "resampler" else self.tokens

    @property
    def vocab(self) -> int:
        return 0


Modality = Annotated[
    Union[TextTokenizer, ImageVQ, VideoVQ, AudioCodec, ActionBins, ContinuousProjector],
    Field(discriminator="kind"),
]

DISCRETE_KINDS = ("text", "image", "video", "audio", "action")


class Vocabulary(SpecModel):
    special_tokens: tuple[str, ...] = Field(
        ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<boa>", "<eoa>", "<mask>"), max_length=1024,
        strict=False,  # a YAML list becomes the tuple; each token must still be a string (base.SpecModel)
        description="special tokens placed first in the unified vocabulary (<pad> <bos> <eos> always; <boi> <eoi> "
                    "with image, video or audio; <boa> <eoa> with actions)")
    pad_to_multiple: int = Field(128, ge=1, le=2**16, description="unified vocabulary padded to this multiple (tensor parallel shards and FP8 GEMMs need multiples of 16)")

    @model_validator(mode="after")
    def _distinct_tokens(self):
        bad = [t for t in self.special_tokens if not t or len(t) > 64 or not t.isprintable()]
        if bad:
            raise ValueError(f"special_tokens: {bad[:3]} are not tokens; each is 1-64 printable characters, e.g. <bos>")
        twice = sorted(t for t, n in Counter(self.special_tokens).items() if n > 1)
        if twice:
            raise ValueError(f"special_tokens: {twice} appear more than once; list each token once")
        return self


def _divisors(n: int, lo: int, hi: int) -> list[int]:
    return [d for d in range(lo, min(hi, n) + 1) if n % d == 0]
