"""Writing and reading trained tokenizers (the folder format is documented in the package
docstring, vlac/data/tokenizers/__init__.py). Loading checks the folder against the spec's
modality and names every disagreeing field."""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "vlac_tokenizer.json"
WEIGHTS = "model.safetensors"
HF_FILE = "tokenizer.json"
FORMAT_VERSION = 1
VQ_FIELDS = ("codebook_size", "codebook_dim", "patch_size", "image_size", "channels")


class TokenizerLoadError(ValueError):
    """A tokenizer folder that is missing, unreadable or disagrees with the spec."""


def write_manifest(folder: Path, manifest: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION, **manifest}, indent=2, sort_keys=True) + "\n")


def _manifest(folder: Path, where: str) -> dict | None:
    file = folder / MANIFEST
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise TokenizerLoadError(f"{where}: cannot read {file} ({e}); train it again with `vlac tokenizer train`") from None


def _where(name: str) -> str:
    return f"modalities.{name}.path"


def load_text(spec, name: str):
    """The `tokenizers.Tokenizer` at spec.path: a `vlac tokenizer train` folder, a Hugging Face
    tokenizer.json, or a folder holding one. Its vocabulary must fit the spec's vocab_size."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    from tokenizers import Tokenizer

    where, path = _where(name), Path(spec.path)
    file = path / HF_FILE if path.is_dir() else path
    if not file.is_file():
        raise TokenizerLoadError(f"{where}: {file} does not exist; point path at a tokenizer.json or the folder "
                                 f"`vlac tokenizer train SPEC --modality {name}` wrote")
    manifest = _manifest(file.parent, where) if path.is_dir() else None
    if manifest is not None and manifest.get("kind") != "text":
        raise TokenizerLoadError(f"{where}: {path} holds a {manifest.get('kind')} tokenizer, not a text one")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # the tokenizers library raises its own exception type
        raise TokenizerLoadError(f"{where}: {file} is not a Hugging Face tokenizer.json ({e})") from None
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > spec.vocab_size:
        raise TokenizerLoadError(f"modalities.{name}.vocab_size: {spec.vocab_size} but the tokenizer at {file} has "
                                 f"{size} entries; set vocab_size: {size} (or more)")
    return tok


def load_vq(spec, name: str):
    """(EMAVQTokenizer in eval mode, manifest) of the folder at spec.path."""
    from safetensors.torch import load_file

    from .ema_vq import EMAVQTokenizer

    where, folder = _where(name), Path(spec.path)
    manifest = _manifest(folder, where) if folder.is_dir() else None
    if manifest is None or not (folder / WEIGHTS).is_file():
        raise TokenizerLoadError(f"{where}: {folder} has no {MANIFEST} and {WEIGHTS}; train one with "
                                 f"`vlac tokenizer train SPEC --modality {name} -o {folder}`")
    if manifest.get("kind") not in ("image", "video"):
        raise TokenizerLoadError(f"{where}: {folder} holds a {manifest.get('kind')} tokenizer, not an image/video VQ")
    wrong = [f"modalities.{name}.{f}: {getattr(spec, f)} but the tokenizer at {folder} was trained with "
             f"{f} {manifest.get(f)}; set {f}: {manifest.get(f)}"
             for f in VQ_FIELDS if manifest.get(f) != getattr(spec, f)]
    if wrong:
        raise TokenizerLoadError("; ".join(wrong) + f" (or train a new tokenizer: vlac tokenizer train SPEC --modality {name})")
    tok = EMAVQTokenizer(spec, hidden=int(manifest["hidden"]), decay=float(manifest["decay"]))
    try:
        tok.load_state_dict(load_file(str(folder / WEIGHTS)))
    except Exception as e:  # a truncated file or tensors of other shapes
        raise TokenizerLoadError(f"{where}: cannot load {folder / WEIGHTS} ({e}); train it again") from None
    return tok.eval(), manifest


def save_vq(folder: Path, tok, name: str, kind: str, report: dict) -> None:
    from safetensors.torch import save_file

    spec = tok.spec
    write_manifest(folder, {"kind": kind, "modality": name, "hidden": tok.hidden, "decay": tok.quantizer.decay,
                            **{f: getattr(spec, f) for f in VQ_FIELDS}, "report": report})
    save_file({k: v.contiguous() for k, v in tok.state_dict().items()}, str(folder / WEIGHTS))


def save_text(folder: Path, tok, name: str, report: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / HF_FILE))
    write_manifest(folder, {"kind": "text", "modality": name, "vocab_size": tok.get_vocab_size(), "report": report})


def trained_tokenizer_digests(exp) -> dict:
    """{"trained": {modality: sha256 of its tokenizer files}} for the modalities with a `path`
    (empty without any), so that `vlac prepare` re-tokenizes when a tokenizer is retrained in place."""
    import hashlib

    out = {}
    for name, m in exp.modalities.items():
        path = getattr(m, "path", None)
        if path is None:
            continue
        p = Path(path)
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        out[name] = h.hexdigest()[:16] if files else "missing"
    return {"trained": out} if out else {}
