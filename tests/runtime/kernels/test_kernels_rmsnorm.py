"""RMSNorm: reference gradcheck, Triton (interpreter) forward and backward against the reference."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vlac.runtime.kernels.rmsnorm import rms_norm_reference, rms_norm_triton


def test_reference_matches_definition_and_gradchecks_in_float64():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(7, dtype=torch.float64, generator=gen, requires_grad=True)
    expected = x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * w
    torch.testing.assert_close(rms_norm_reference(x, w), expected)
    assert torch.autograd.gradcheck(rms_norm_reference, (x, w, 1e-6))


@pytest.mark.triton
@given(
    st.lists(st.integers(0, 5), min_size=0, max_size=2), st.integers(1, 70),
    st.sampled_from([1e-6, 1e-2]), st.integers(0, 2**31 - 1),
)
def test_triton_forward_and_backward_match_reference_fp32(lead, cols, eps, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, cols, generator=gen) * 3
    w = torch.randn(cols, generator=gen)
    upstream = torch.randn(*lead, cols, generator=gen)
    results = []
    for fn in (rms_norm_reference, rms_norm_triton):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fn(xi, wi, eps)
        results.append((y, *torch.autograd.grad(y, (xi, wi), upstream)))
    for got, ref in zip(results[1], results[0]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.triton
def test_triton_bf16_keeps_dtypes_and_matches_reference():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 48, generator=gen).bfloat16().requires_grad_()
    w = (torch.randn(48, generator=gen) + 1).bfloat16().requires_grad_()
    y = rms_norm_triton(x, w)
    ref = rms_norm_reference(x, w)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref)
    got = torch.autograd.grad(y.float().sum(), (x, w))
    expected = torch.autograd.grad(ref.float().sum(), (x, w))
    for g, e in zip(got, expected):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g, e, rtol=2e-2, atol=2e-2)


def test_triton_rejects_mismatched_weight():
    with pytest.raises(ValueError, match="weight shape"):
        rms_norm_triton(torch.ones(2, 8), torch.ones(4))
