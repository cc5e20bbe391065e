"""README.md of an exported checkpoint: what it is, the vocabulary layout, the experiment spec."""

from __future__ import annotations

from vlac.spec import Experiment, dump

from .vision import SAVED_AS
from .vocab import exported_layout


def model_card(exp: Experiment, family: str, step: int | None, vlac_modules: list[str],
               copied: list[str], modules_file: str = "vlac_modules.safetensors", towers: dict[str, str] | None = None) -> str:
    bb = exp.backbone
    source = f"started from `{bb.init.hf}`" if bb.init is not None else "trained from random initialisation"
    lines = [
        "---", "library_name: transformers", "tags: [vlac]", "---", "",
        f"# {exp.name}", "",
        f"A {family} decoder exported by `vlac export` from the experiment `{exp.name}`"
        + (f" at step {step}" if step is not None else "") + f"; {source}.",
        "", exp.description or "", "",
        "## Vocabulary", "",
        "The checkpoint's text tokens keep their ids (a tokenizer of the starting checkpoint still works); "
        "the rows vlac added follow them:", "",
    ]
    lines += vocab_table(exp)
    lines += ["", "## Files", ""]
    lines.append(f"- copied from the starting checkpoint: {', '.join(copied)}" if copied
                 else "- tokenizer: none (the run did not start from a checkpoint with tokenizer files)")
    if vlac_modules:
        lines.append(f"- `{modules_file}`: what vlac trains besides the decoder, under vlac's names "
                     f"({len(vlac_modules)} tensors: {', '.join(vlac_modules[:6])}{' ...' if len(vlac_modules) > 6 else ''})")
    for name, folder in (towers or {}).items():
        enc = exp.modalities[name].encoder
        _, family = enc.tower()
        state = "frozen" if enc.freeze else "fine-tuned"
        lines.append(f"- `{folder}/`: the {name} modality's {family} vision tower ({SAVED_AS[family][1]}), started "
                     f"from `{enc.hf}` and {state}; its layer {enc.layer} hidden states"
                     f"{' without the class token' if enc.drop_class_token and family == 'clip' else ''} "
                     f"feed the projector")
    if exp.fusion.mode == "late":
        lines.append("- late fusion: the cross-attention layers are in the vlac modules file; the decoder alone "
                     "is the language model without them")
    lines += ["", "## Experiment", "", "```yaml", dump(exp).rstrip(), "```", ""]
    return "\n".join(lines)


def vocab_table(exp: Experiment) -> list[str]:
    """The Markdown table of the exported vocabulary's ranges."""
    return ["| ids | rows | what |", "|---|---|---|"] + [
        f"| {first}..{first + rows - 1} | {rows} | {what} |" for what, first, rows in exported_layout(exp)]
