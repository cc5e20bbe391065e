import numpy as np
import pytest
import torch

from vlac.spec.modalities import ActionBins, AudioCodec, ImageVQ, TextTokenizer
from vlac.runtime.tokenizers import (ActionTokenizer, AudioCodecTokenizer, ByteTokenizer, VectorQuantizer,
                                     VQTokenizer, text_tokenizer, train_vq)
from vlac.runtime.tokenizers.vq import code_statistics

SPEC = ImageVQ(image_size=8, channels=1, patch_size=4, codebook_size=16, codebook_dim=4)


def test_straight_through_estimator_passes_gradient_to_the_encoder():
    torch.manual_seed(0)
    tok = VQTokenizer(SPEC)
    x = torch.rand(3, 1, 8, 8)
    recon, codes, vq_loss, z = tok(x)
    assert recon.shape == x.shape and codes.shape == (3, 4) and codes.max() < 16
    ((recon - x) ** 2).mean().backward()
    assert tok.encoder[0].weight.grad.abs().sum() > 0  # through the non-differentiable argmin
    assert tok.quantizer.codebook.weight.grad is None  # reconstruction does not move the codebook


def test_codebook_and_commitment_losses():
    vq = VectorQuantizer(4, 2, beta=0.25)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0, 0], [1, 0], [0, 1], [1, 1]]))
    z = torch.tensor([[0.1, 0.0], [0.9, 1.2]], requires_grad=True)
    zq, codes, loss = vq(z)
    assert codes.tolist() == [0, 3]
    sq = ((z.detach() - vq.codebook.weight[codes].detach()) ** 2).mean()
    assert loss.item() == pytest.approx(1.25 * sq.item())
    torch.testing.assert_close(zq, vq.codebook.weight[codes].detach())
    loss.backward()
    assert vq.codebook.weight.grad[1].abs().sum() == 0 and vq.codebook.weight.grad[0].abs().sum() > 0


def test_resampling_revives_dead_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, dead_threshold=1.0)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.cat([torch.zeros(1, 2), torch.full((7, 2), 100.0)]))
    z = torch.randn(64, 2)
    vq(z)
    assert vq.usage[0] == 64 and (vq.usage[1:] == 0).all()  # seven dead codes
    assert vq.resample_dead_codes(z) == 7
    assert (vq.usage == 0).all()
    vq(z)
    assert (vq.usage > 0).sum() > 1  # the resampled codes now win some vectors
    used = code_statistics(vq.quantize(z), 8)
    assert used["usage"] > 1 / 8 and used["entropy"] > 0


def test_train_vq_is_deterministic_and_reports_resampling():
    images = np.random.default_rng(0).random((64, 1, 8, 8)).astype(np.float32)
    a, rep_a = train_vq(SPEC, images, steps=20, batch=16, resample_every=10)
    b, rep_b = train_vq(SPEC, images, steps=20, batch=16, resample_every=10)
    x = torch.as_tensor(images)
    assert torch.equal(a.encode(x), b.encode(x))
    assert rep_a == rep_b and rep_a.resampled and 0 < rep_a.usage <= 1
    assert a.decode(a.encode(x)).shape == x.shape


def test_action_binning_round_trip_within_half_a_bin():
    spec = ActionBins(dims=3, bins=16, low=-2.0, high=2.0)
    tok = ActionTokenizer(spec)
    a = np.random.default_rng(0).uniform(-2, 2, size=(100, 3))
    bins = tok.encode(a)
    assert bins.min() >= 0 and bins.max() <= 15
    assert np.abs(tok.decode(bins) - a).max() <= tok.max_error + 1e-12
    assert tok.encode(np.array([-5.0, 2.0, 5.0])).tolist() == [0, 15, 15]  # clipped to the range


def test_audio_codec_tokens_stay_in_their_codebook_ranges():
    spec = AudioCodec(codebooks=3, codebook_size=8, frame_rate_hz=4, seconds=1)
    codec = AudioCodecTokenizer(spec, sample_rate=400)
    wave = torch.randn(2, 400)
    recon, tokens, loss = codec(wave)
    assert tokens.shape == (2, spec.tokens) and recon.shape == (2, 400)
    cb = tokens.view(2, -1, 3) // 8
    assert (cb == torch.arange(3)).all()  # codebook j owns ids j*8 .. j*8+7
    assert codec.decode(tokens).shape == recon.shape
    loss.backward()


def test_text_tokenizers_round_trip():
    byte = ByteTokenizer()
    assert byte.decode(byte.encode("keep left")) == "keep left"
    corpus = ("keep left", "keep right", "digit? seven", "odd? yes")
    bpe = text_tokenizer(TextTokenizer(tokenizer="bpe", vocab_size=300), corpus)
    again = text_tokenizer(TextTokenizer(tokenizer="bpe", vocab_size=300), corpus)
    ids = bpe.encode("keep right")
    assert bpe.decode(ids) == "keep right" and max(ids) < 300
    assert len(ids) < len("keep right")  # merges learned
    assert again.encode("digit? seven") == bpe.encode("digit? seven")
