"""CLIP and SigLIP vision towers read from tiny random checkpoints reproduce transformers' hidden
states and pooled outputs (fp32, 1e-5): every layer, the class token, SigLIP's final norm and
attention-pooling head, a whole CLIP model's `vision_model.` prefix. A tower trained a step and
saved back loads in transformers with vlac's outputs."""

import pytest
import torch

from hf_models import TOWER, save_tower


@pytest.mark.parametrize("kind", ["clip", "siglip", "clip-full"])
def test_hidden_states_match_transformers(kind, tmp_path):
    from vlac.runtime.hf.vision import load_vision_tower

    reference = save_tower(kind, tmp_path / kind)
    tower = load_vision_tower(tmp_path / kind)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = reference(pixel_values=pixels, output_hidden_states=True)
        for layer in range(TOWER["num_hidden_layers"] - 1):  # hidden_states[0] is the embeddings
            torch.testing.assert_close(tower.features(pixels, layer), out.hidden_states[layer + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(tower.features(pixels), out.last_hidden_state, atol=1e-5, rtol=0)
        torch.testing.assert_close(tower(pixels)[1], out.pooler_output, atol=1e-5, rtol=0)
        llava = tower.features(pixels, -2, drop_class_token=True)
    assert llava.shape == (2, 16, 32)


@pytest.mark.parametrize("kind", ["clip", "siglip", "clip-full"])
def test_a_trained_tower_saves_as_the_family_transformers_loads(kind, tmp_path):
    """One optimiser step moves every weight of the tower (gradients reach all of it, the pooling
    head included); the saved folder loads in transformers' vision model of the family with no
    missing or unexpected tensors and gives vlac's last hidden state and pooled output."""
    import transformers

    from vlac.runtime.hf.vision import load_vision_tower, save_vision_tower

    save_tower(kind, tmp_path / "src")
    tower = load_vision_tower(tmp_path / "src")
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    pixels = torch.randn(2, 3, 32, 32)
    last, pooled = tower(pixels)
    (last.square().mean() + pooled.square().mean()).backward()
    torch.optim.Adam(tower.parameters(), lr=1e-2).step()
    assert all(not torch.equal(p, before[k]) for k, p in tower.state_dict().items())

    files = save_vision_tower(tower, tmp_path / "out")
    assert files == ["config.json", "model.safetensors"]
    cls = transformers.SiglipVisionModel if kind == "siglip" else transformers.CLIPVisionModel
    reference, info = cls.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        ours, out = tower(pixels), reference.eval()(pixel_values=pixels)
    torch.testing.assert_close(ours[0], out.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[1], out.pooler_output, atol=1e-5, rtol=0)
    save_vision_tower(tower, tmp_path / "again")
    assert all((tmp_path / "out" / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)


def test_other_models_are_refused(tmp_path):
    from vlac.runtime.hf.vision import load_vision_tower

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="choose a CLIP or SigLIP checkpoint"):
        load_vision_tower(tmp_path)


@pytest.mark.parametrize("kind,layer", [("clip", -1), ("clip", 0), ("siglip", -1), ("siglip", -2)])
def test_unreached_modules_are_exactly_those_features_leave_without_gradient(kind, layer, tmp_path):
    from vlac.runtime.hf.vision import load_vision_tower

    save_tower(kind, tmp_path / kind)
    tower = load_vision_tower(tmp_path / kind)
    tower.features(torch.randn(1, 3, 32, 32), layer).square().sum().backward()
    unreached = {id(p) for m in tower.unreached(layer) for p in m.parameters()}
    assert unreached and all((p.grad is None) == (id(p) in unreached) for p in tower.parameters())
