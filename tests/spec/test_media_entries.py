"""Late fusion's media entries come from one rule over the spec (spec/media_entries.py): which
modalities cross-attention reads and how many entries each gives per sequence."""

from pathlib import Path

from vlac.spec import load
from vlac.spec.media_entries import media_entry_counts

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FLAMINGO = EXAMPLES / "flamingo.yaml"  # tiny profile: image = 16 ViT vectors through a 4-query resampler


def test_a_resampler_gives_its_queries_and_a_projector_one_entry_per_input_vector():
    assert media_entry_counts(load(FLAMINGO, profile="tiny")) == {"image": 4}
    mlp = load(FLAMINGO, ["modalities.image.projector=mlp"], profile="tiny")
    assert media_entry_counts(mlp) == {"image": 16}


def test_image_tokens_are_entries_and_text_is_not_under_late_fusion():
    exp = load(EXAMPLES / "tiny_vla.yaml", ["fusion.mode=late", "moe=null"])
    counts = media_entry_counts(exp)
    assert counts and list(counts) == [n for n in exp.modalities if n in counts]  # the spec's order
    for name, entries in counts.items():
        m = exp.modalities[name]
        assert m.kind in ("image", "video", "continuous")
        assert entries == (m.positions if m.kind == "continuous" else m.tokens)
    assert not any(exp.modalities[n].kind == "text" for n in counts)


def test_early_fusion_has_no_media_entries():
    assert media_entry_counts(load(EXAMPLES / "tiny_vla.yaml")) == {}
