"""Sliding-window checkpoints: Mistral's window on every layer, Qwen2's from max_window_layers on,
Mixtral's and Qwen3-MoE's on every layer; imported into backbone.sliding_window /
sliding_window_layers and exported back, vlac's logits equal transformers' (fp32, 1e-5) on a
sequence longer than the window."""

import pytest
import torch

import vlac

from hf_models import experiment, reference_logits, save_tiny, vlac_text_logits

WINDOW = 4
IDS = torch.tensor([[5, 17, 3, 90, 42, 0, 7, 64, 11, 2, 33, 95, 8, 21, 60, 1]])  # 16 tokens > WINDOW
CASES = {  # family, config overrides, the windowed layers vlac must read from them
    "mistral": ({"sliding_window": WINDOW}, "all", (0, 1)),
    "qwen2": ({"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1, "num_hidden_layers": 3},
              "from:1", (1, 2)),
    "mixtral": ({"sliding_window": WINDOW}, "all", (0, 1)),
    "qwen3_moe": ({"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}, "all", (0, 1)),
}
MOE = ("mixtral", "qwen3_moe")


def _imported(family, folder):
    from vlac.runtime.hf.load import load_pretrained
    from vlac.runtime.model import build_model

    moe = {"moe": {"capacity_factor": None}} if family in MOE else {}
    exp = experiment(folder, **moe)
    model = build_model(exp)
    load_pretrained(model, exp)
    return exp, model


@pytest.mark.parametrize("family", list(CASES))
def test_windowed_logits_match_transformers(family, tmp_path):
    overrides, pattern, layers = CASES[family]
    folder = save_tiny(family, tmp_path / family, **overrides)
    exp, model = _imported(family, folder)
    bb = exp.backbone
    assert (bb.sliding_window, bb.sliding_window_layers, bb.window_layers()) == (WINDOW, pattern, layers)
    torch.testing.assert_close(vlac_text_logits(model, exp, IDS), reference_logits(folder, IDS), atol=1e-5, rtol=0)


def test_the_window_is_what_makes_them_match(tmp_path):
    """The comparison can fail: the same weights without the window differ beyond the window."""
    folder = save_tiny("mistral", tmp_path / "m", sliding_window=WINDOW)
    exp, model = _imported("mistral", folder)
    for block in model.layers:
        block.attn.window = 0
    diff = (vlac_text_logits(model, exp, IDS) - reference_logits(folder, IDS)).abs()
    assert diff[:, :WINDOW].max() < 1e-5 and diff[:, WINDOW:].max() > 1e-3


def test_a_spec_that_disagrees_with_the_checkpoints_window_is_refused(tmp_path):
    from vlac.spec import SpecError

    folder = save_tiny("qwen2", tmp_path / "q", **CASES["qwen2"][0])
    with pytest.raises(SpecError) as err:
        experiment(folder, backbone={"sliding_window_layers": "all"})
    assert "backbone.sliding_window_layers" in str(err.value) and "[0, 1, 2]" in str(err.value)
    # another pattern naming the same layers is the checkpoint's
    assert experiment(folder, backbone={"sliding_window_layers": [1, 2]}).backbone.window_layers() == (1, 2)


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3_moe"])
def test_windowed_export_loads_in_transformers_with_vlac_logits_and_reimports_its_window(family, tmp_path):
    from test_hf_export import save_run

    from vlac.runtime.hf.export import export
    from vlac.runtime.hf.vocab import export_order

    overrides, pattern, layers = CASES[family]
    exp = experiment(save_tiny(family, tmp_path / "src", **overrides),
                     **({"moe": {"capacity_factor": None}} if family in MOE else {}))
    model, step_dir = save_run(exp, tmp_path, perturb=True)
    assert export(exp, step_dir, tmp_path / "out")["family"] == family
    offset = exp.vocab_layout().range_of("text").offset
    model.eval()
    with torch.no_grad():
        ours = model({"tokens": IDS + offset})["logits"][..., export_order(exp)]
    torch.testing.assert_close(reference_logits(tmp_path / "out", IDS), ours, atol=1e-5, rtol=0)
    again = experiment(tmp_path / "out", modalities={"text": {"kind": "text", "tokens": 14,
                                                              "vocab_size": exp.modalities["text"].vocab_size}},
                       **({"moe": {"capacity_factor": None}} if family in MOE else {}))
    assert (again.backbone.sliding_window, again.backbone.window_layers()) == (WINDOW, layers)


def test_export_refuses_windows_its_family_cannot_place():
    from vlac.runtime.hf.hf_config import inexpressible

    exp = vlac.load({"name": "w", "modalities": {"text": {"kind": "text", "vocab_size": 64, "tokens": 8}},
                     "backbone": {"layers": 2, "hidden": 32, "heads": 4, "sliding_window": 4,
                                  "sliding_window_layers": "global_every:2"},
                     "data": {"mixture": [{"name": "t", "modalities": ["text"]}]}})
    (problem,) = inexpressible(exp)
    assert problem.startswith("backbone.sliding_window_layers: mistral windows every layer or none")
    qwen = exp.model_copy(update={"backbone": exp.backbone.model_copy(update={"qkv_bias": True})})
    assert inexpressible(qwen) == []
