import pytest
import torch
import torch.fx as fx

import vlac
from vlac.runtime.batch import batch_keys, example_batch
from vlac.runtime.data import SyntheticData
from vlac.runtime.losses import Objective
from vlac.runtime.model import Block, build_model

from runtime_helpers import EXAMPLES, ROOT, TINY, tiny_profile, train_steps


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_full_size_model_and_objective_trace_on_meta(path):
    # how fast is measured by benchmarks/trace.py: no wall-clock assertions in tests
    exp = vlac.load(path)
    model = build_model(exp, "meta")
    gm = fx.symbolic_trace(Objective(model, exp))
    assert any(n.op == "call_function" and n.target is torch.nn.functional.scaled_dot_product_attention
               for n in gm.graph.nodes)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_tiny_profile_builds_on_cpu_and_matches_its_trace(path):
    exp = tiny_profile(path)
    model = build_model(exp).eval()
    batch = SyntheticData(exp).micro_batch(0, 0, 2, 10.0, torch.device("cpu"))
    assert set(batch) == set(batch_keys(exp))
    shapes = {k: v.shape for k, v in example_batch(exp, 2, device="cpu").items()}
    assert {k: v.shape for k, v in batch.items()} == shapes  # the data honours the batch contract
    gm = fx.symbolic_trace(model)
    torch.testing.assert_close(gm(batch)["logits"], model(batch)["logits"])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_tiny_profile_trains_with_the_loss_going_down(path):
    losses = train_steps(tiny_profile(path), 30)
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(losses)))
    assert last < 0.9 * first, f"loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_gradients_reach_every_trainable_parameter(path):
    exp = tiny_profile(path)
    model = build_model(exp)
    data = SyntheticData(exp)
    batch = data.micro_batch(0, 0, exp.train.global_batch, data.global_loss_tokens(0), torch.device("cpu"))
    Objective(model, exp)(batch)["loss"].backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, missing


def test_frozen_language_model_gets_no_gradient_and_gates_start_closed():
    exp = tiny_profile(ROOT / "examples" / "flamingo.yaml")
    assert exp.fusion.freeze_lm and exp.fusion.gated
    model = build_model(exp)
    assert not any(p.requires_grad for p in model.layers.parameters())
    assert all(p.requires_grad for p in model.cross_layers.parameters())
    batch = example_batch(exp, 2, device="cpu")
    batch["tokens"] = torch.randint(0, 200, batch["tokens"].shape)
    with_media = model(batch)["logits"]
    batch["image.features"] = torch.randn_like(batch["image.features"])
    # tanh(0) gates: the media cannot change the frozen LM's output before training
    torch.testing.assert_close(model(batch)["logits"], with_media)


def test_parallelism_names_are_stable():
    tiny_exp = vlac.load(TINY)
    model = build_model(tiny_exp)
    block = model.layers[0]
    assert isinstance(block, Block)
    for name in ("wq", "wk", "wv", "wo"):
        assert isinstance(getattr(block.attn, name), torch.nn.Linear)
    moe = block.mlp
    assert moe.router.weight.shape == (tiny_exp.moe.experts, tiny_exp.backbone.hidden)
    assert moe.router.expert_bias.shape == (tiny_exp.moe.experts,)
    e, d, f = tiny_exp.moe.experts, tiny_exp.backbone.hidden, tiny_exp.moe.expert_hidden
    assert moe.experts.w1.shape == (e, d, f) and moe.experts.w3.shape == (e, d, f) and moe.experts.w2.shape == (e, f, d)
    x = torch.randn(2, 8, d)
    y, aux, load, dropped = block(x, None)
    assert y.shape == x.shape and aux.dim() == 0 and load.shape == (e,) and dropped.dim() == 0
    for attr in ("embed", "pos_embed", "projectors", "layers", "norm", "head"):
        assert hasattr(model, attr)


def test_dual_stream_uses_separate_weights_per_stream():
    exp = vlac.load(TINY, ["fusion.stream=dual", "moe=null"])
    model = build_model(exp).eval()
    tokens = torch.randint(0, 200, (1, 12))
    text_only = torch.zeros_like(tokens)
    base = model({"tokens": tokens, "modality": text_only})["logits"]
    with torch.no_grad():
        for block in model.layers:
            block.media.mlp.w2.weight.add_(1.0)  # perturb only the second stream
    torch.testing.assert_close(model({"tokens": tokens, "modality": text_only})["logits"], base)
    other = torch.ones_like(tokens)  # image positions: the second stream
    assert not torch.allclose(model({"tokens": tokens, "modality": other})["logits"], base)


def test_video_encoder_and_pose_embeddings_build_and_train():
    path = ROOT / "examples" / "vla_10b_moe_h100.yaml"
    exp = vlac.load(path, ["modalities.video.encoder={frame_layers: 1, frame_hidden: 32, aggregator_layers: 1, "
                           "aggregator_hidden: 48}", "modalities.video.pose_embedding.kind=learned",
                           "modalities.video.time_embedding.kind=learned"], profile="tiny")
    losses = train_steps(exp, 12)
    assert losses[-1] < losses[0]


VARIANTS = {
    "late-fusion-vq-image": ["fusion.mode=late", "fusion.cross_attention_every=1", "moe=null"],
    "dual-stream-moe": ["fusion.stream=dual"],
    "segment-memory": ["memory.segment_length=16", "memory.memory_tokens=4"],
    "dropless-moe": ["moe.capacity_factor=null"],
    "sigmoid-aux-free": ["moe.router=sigmoid", "moe.balancing=aux_free", "moe.top_k=1"],
    "gpt2-style": ["backbone.positions=learned", "backbone.norm=layernorm", "backbone.mlp=gelu", "backbone.bias=true",
                   "moe=null"],
    "prefix-lm-qknorm": ["fusion.attention_mask=prefix_lm", "backbone.qk_norm=true", "losses.ar.mask_prompt=true"],
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_builds_traces_and_learns(name):
    exp = vlac.load(TINY, VARIANTS[name])
    model = build_model(exp).eval()
    batch = SyntheticData(exp).micro_batch(0, 0, 2, 10.0, torch.device("cpu"))
    torch.testing.assert_close(fx.symbolic_trace(model)(batch)["logits"], model(batch)["logits"])
    fx.symbolic_trace(Objective(build_model(exp, "meta"), exp))
    losses = train_steps(exp, 15)
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses
