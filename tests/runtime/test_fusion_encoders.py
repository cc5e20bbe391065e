import pytest
import torch

import vlac
from vlac.runtime.batch import example_batch
from vlac.runtime.data import SyntheticData
from vlac.runtime.diagnostics import pose_sensitivity
from vlac.runtime.encoders import FourierFeatures, SpatioTemporalEncoder, VisualPositionEmbedding
from vlac.runtime.fusion import CrossAttention, GatedCrossAttentionLayer, Resampler
from vlac.runtime.layers import RMSNorm
from vlac.runtime.masks import attention_mask
from vlac.runtime.model import build_model
from vlac.spec.modalities import VideoEncoder, VideoVQ

from runtime_helpers import ROOT, TINY

BB = vlac.load(TINY).backbone
VIDEO = VideoVQ(cameras=2, frames=4, temporal_patch=2, image_size=8, patch_size=4, codebook_size=16,
                encoder=VideoEncoder(frame_layers=1, frame_hidden=32, aggregator_layers=1, aggregator_hidden=48))


def test_rmsnorm_matches_its_definition():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(8.0))
    x = torch.randn(3, 8)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), ref)


def test_masks():
    span = torch.tensor([[0, 1, 1, 0, 2, 2]])
    m = attention_mask("bidirectional_image", span, None)[0, 0]
    assert m[1, 2] and m[2, 1] and not m[0, 1] and m[4, 1] and m[5, 4] and m[4, 5] and not m[3, 4]
    prefix = torch.tensor([[1, 1, 1, 0, 0]])
    p = attention_mask("prefix_lm", None, prefix)[0, 0]
    assert p[0, 2] and not p[0, 3] and p[4, 0] and not p[3, 4]
    mem = attention_mask("causal", torch.zeros(1, 12, dtype=torch.long), None, segment_length=4, memory_tokens=2)[0, 0]
    assert mem[5, 4] and mem[5, 3] and mem[5, 2] and not mem[5, 1]  # own segment + the last 2 of the previous
    assert mem[9, 7] and not mem[9, 5] and not mem[5, 6]
    with pytest.raises(ValueError, match="choose from"):
        attention_mask("sliding", span, None)


def test_cross_attention_ignores_absent_media_and_zeroes_queries_without_any():
    attn = CrossAttention(BB)
    x, media = torch.randn(2, 5, 64), torch.randn(2, 3, 64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    out = attn(x, media, mask)
    changed = media.clone()
    changed[0, 2] += 5.0
    torch.testing.assert_close(attn(x, changed, mask), out)  # the masked entry is invisible
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], attn.wo.bias.expand(5, -1) if attn.wo.bias is not None else torch.zeros(5, 64))


def test_gated_cross_attention_starts_as_identity_and_opens():
    layer = GatedCrossAttentionLayer(BB, gated=True)
    x, media, mask = torch.randn(1, 4, 64), torch.randn(1, 3, 64), torch.ones(1, 3)
    torch.testing.assert_close(layer(x, media, mask), x)
    with torch.no_grad():
        layer.attn_gate.fill_(1.0)
    assert not torch.allclose(layer(x, media, mask), x)
    plain = GatedCrossAttentionLayer(BB, gated=False)
    assert not torch.allclose(plain(x, media, mask), x)


def test_resampler_gives_fixed_queries_and_masks_absent_inputs():
    res = Resampler(BB, input_dim=12, queries=3, layers=2)
    feats = torch.randn(2, 7, 12)
    present = torch.ones(2, 7)
    present[1, 4:] = 0
    out = res(feats, present)
    assert out.shape == (2, 3, 64)
    changed = feats.clone()
    changed[1, 5] += 3.0
    torch.testing.assert_close(res(changed, present)[1], out[1])


def test_fourier_features():
    f = FourierFeatures(3)
    x = torch.tensor([[0.25, -1.0]])
    out = f(x)
    assert out.shape == (1, FourierFeatures.out_dim(2, 3))
    torch.testing.assert_close(out[0, 2], torch.sin(torch.tensor(torch.pi * 0.25)))


def test_pose_and_time_embeddings_follow_camera_and_time_of_each_token():
    emb = VisualPositionEmbedding(VIDEO, 16)
    per_frame, steps = 4, 2
    assert VIDEO.tokens == 2 * steps * per_frame
    assert emb.camera_id.tolist() == [0] * 8 + [1] * 8
    assert emb.time_id.tolist()[:8] == [0] * 4 + [1] * 4
    pose = torch.randn(3, 2, 12)
    out = emb(pose)
    assert out.shape == (3, 16, 16)
    torch.testing.assert_close(out[:, 0], out[:, 1])  # same camera, same time step
    assert not torch.allclose(out[:, 0], out[:, 4]) and not torch.allclose(out[:, 0], out[:, 8])
    moved = pose.clone()
    moved[:, 1] += 1.0
    changed = emb(moved)
    torch.testing.assert_close(changed[:, :8], out[:, :8])  # only camera 1's tokens move
    assert not torch.allclose(changed[:, 8:], out[:, 8:])


def test_spatio_temporal_encoder_shapes_and_frame_sharing():
    enc = SpatioTemporalEncoder(VIDEO, BB)
    codes = torch.randn(2, VIDEO.tokens, 64, requires_grad=True)
    out = enc(codes, torch.randn(2, 2, 12))
    assert out.shape == codes.shape
    out.sum().backward()
    assert enc.frame_layers[0].attn.wq.weight.grad is not None and codes.grad.abs().sum() > 0
    n_frame = sum(p.numel() for p in enc.frame_layers.parameters())
    n_agg = sum(p.numel() for p in enc.aggregator.parameters())
    assert n_frame < n_agg  # asymmetric: a small shared per-frame encoder, a larger aggregator


def test_pose_sanity_check_on_the_flagship():
    exp = vlac.load(ROOT / "examples" / "vla_10b_moe_h100.yaml", profile="tiny")
    model = build_model(exp).eval()
    data = SyntheticData(exp)
    samples = [s for s in (data.sample(i) for i in range(40)) if "video.pose" in s.extras][:4]
    batch = data.collate(samples, 1.0, torch.device("cpu"))
    assert pose_sensitivity(model, batch, "video") > 1e-3
    batch_none = example_batch(exp, 1, device="cpu")
    assert "video.pose" in batch_none
