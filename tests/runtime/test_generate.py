import pytest
import torch

import vlac
from vlac.runtime.generate import decoding, dropless_routing, generate, make_cache
from vlac.runtime.model import build_model

from runtime_helpers import TINY


@pytest.mark.parametrize("overrides", [[], ["backbone.positions=learned"], ["fusion.stream=dual"],
                                       ["memory.segment_length=8", "memory.memory_tokens=3"],
                                       ["backbone.qk_norm=true", "moe=null"],
                                       ["backbone.sliding_window=3", "backbone.sliding_window_layers=global_every:2"],
                                       # a sink's logit near 0 still adds exp(0) = 1 to each denominator
                                       ["backbone.attention_chunk=3", "backbone.attention_chunk_layers=global_every:2",
                                        "backbone.attention_sinks=true"]],
                         ids=["rope-moe", "learned", "dual", "memory", "qknorm-dense", "local-global-window",
                              "chunks-sinks"])
def test_kv_cache_decode_equals_the_full_forward(overrides):
    exp = vlac.load(TINY, overrides)
    model = build_model(exp).eval()
    tokens = torch.randint(0, exp.vocab_layout().size, (2, 20))
    modality = torch.randint(-1, 3, tokens.shape)
    batch = lambda a, b: {"tokens": tokens[:, a:b], "modality": modality[:, a:b],  # noqa: E731
                          "span": torch.zeros_like(tokens[:, a:b]), "prefix": torch.zeros_like(tokens[:, a:b])}
    with torch.no_grad(), dropless_routing(model):
        full = model(batch(0, 20))["logits"]
        cache = make_cache(model, 2)
        with decoding(model, cache):
            steps = [model(batch(0, 7))["logits"]] + [model(batch(i, i + 1))["logits"] for i in range(7, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    assert cache.length == 20 and model.kv_cache is None


def test_generation_stays_in_the_modality_range_and_sampling_is_seeded():
    exp = vlac.load(TINY)
    model = build_model(exp)
    prompt = {"tokens": torch.randint(0, 100, (3, 5))}
    r = exp.vocab_layout().range_of("action")
    greedy = generate(model, prompt, 4, modality="action")
    assert greedy.shape == (3, 4) and ((greedy >= r.offset) & (greedy < r.offset + r.size)).all()
    assert torch.equal(greedy, generate(model, prompt, 4, modality="action"))
    a = generate(model, prompt, 6, "image", temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt, 6, "image", temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and model.training  # the training mode is restored
    with pytest.raises(ValueError, match="choose from"):
        generate(model, prompt, 1, modality="nope")


def test_cache_overflow_is_reported():
    exp = vlac.load(TINY)
    model = build_model(exp)
    with pytest.raises(ValueError, match="max_length"):
        generate(model, {"tokens": torch.zeros(1, 4, dtype=torch.long)}, 8, cache=make_cache(model, 1, 6))
