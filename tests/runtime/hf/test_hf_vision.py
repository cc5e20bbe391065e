"""CLIP and SigLIP vision towers read from tiny random checkpoints reproduce transformers' hidden
states (fp32, 1e-5): every layer, the class token, SigLIP's final norm, a whole CLIP model's
`vision_model.` prefix."""

import pytest
import torch

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
            patch_size=8)


def _save(kind: str, folder):
    import transformers

    torch.manual_seed(0)
    if kind == "clip-full":
        cfg = transformers.CLIPConfig(vision_config=TINY, text_config=dict(hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, vocab_size=50))
        transformers.CLIPModel(cfg).save_pretrained(folder)
        return transformers.CLIPVisionModel.from_pretrained(folder).eval()
    config, model = {"clip": ("CLIPVisionConfig", "CLIPVisionModel"), "siglip": ("SiglipVisionConfig", "SiglipVisionModel")}[kind]
    m = getattr(transformers, model)(getattr(transformers, config)(**TINY)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    m.save_pretrained(folder)
    return m


@pytest.mark.parametrize("kind", ["clip", "siglip", "clip-full"])
def test_hidden_states_match_transformers(kind, tmp_path):
    from vlac.runtime.hf.vision import load_vision_tower

    reference = _save(kind, tmp_path / kind)
    tower = load_vision_tower(tmp_path / kind)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = reference(pixel_values=pixels, output_hidden_states=True)
        for layer in range(TINY["num_hidden_layers"] - 1):  # hidden_states[0] is the embeddings
            torch.testing.assert_close(tower.features(pixels, layer), out.hidden_states[layer + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(tower.features(pixels), out.last_hidden_state, atol=1e-5, rtol=0)
        llava = tower.features(pixels, -2, drop_class_token=True)
    assert llava.shape == (2, 16, 32)


def test_other_models_are_refused(tmp_path):
    from vlac.runtime.hf.vision import load_vision_tower

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="choose a CLIP or SigLIP checkpoint"):
        load_vision_tower(tmp_path)
