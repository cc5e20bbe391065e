"""MoE permute/unpermute: reference properties, Triton (interpreter) vs reference, gradients."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vlac.runtime.kernels.moe_permute import (
    permute_reference,
    permute_triton,
    permuted_rows_bound,
    unpermute_reference,
    unpermute_triton,
)


@st.composite
def routings(draw, max_tokens=12):
    """(x, expert_idx, router_weights, num_experts, align): distinct experts per token, so small
    token counts against up to 6 experts leave ragged and empty groups; T may be 0."""
    num_experts = draw(st.integers(1, 6))
    top_k = draw(st.integers(1, min(num_experts, 3)))
    tokens = draw(st.integers(0, max_tokens))
    hidden = draw(st.integers(1, 9))
    align = draw(st.sampled_from([1, 4, 16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    expert_idx = torch.stack(
        [torch.randperm(num_experts, generator=gen)[:top_k] for _ in range(tokens)]
    ) if tokens else torch.empty(0, top_k, dtype=torch.long)
    x = torch.randn(tokens, hidden, generator=gen)
    weights = torch.rand(tokens, top_k, generator=gen)
    return x, expert_idx, weights, num_experts, align


@given(routings())
def test_reference_groups_rows_by_expert_with_aligned_padding(case):
    x, expert_idx, _, num_experts, align = case
    x_perm, meta, counts, offsets = permute_reference(x, expert_idx, num_experts, align)

    assert torch.equal(counts, torch.bincount(expert_idx.reshape(-1), minlength=num_experts))
    sizes = offsets.diff()
    assert torch.equal(sizes, (counts + align - 1) // align * align)
    assert x_perm.shape == (int(offsets[-1]), x.shape[1]) == (meta.num_rows, x.shape[1])
    assert meta.num_rows <= permuted_rows_bound(*expert_idx.shape, num_experts, align)
    for e in range(num_experts):
        tokens = (expert_idx == e).any(dim=1).nonzero().flatten()  # ascending: stable order
        start, n = int(offsets[e]), int(counts[e])
        assert torch.equal(x_perm[start:start + n], x[tokens])
        assert not x_perm[start + n:int(offsets[e + 1])].any()  # zero padding
    assert torch.equal(x_perm[meta.row_map], x.unsqueeze(1).expand(-1, expert_idx.shape[1], -1))


@given(routings())
def test_reference_unpermute_inverts_permute(case):
    x, expert_idx, weights, num_experts, align = case
    x_perm, meta, _, _ = permute_reference(x, expert_idx, num_experts, align)
    y = unpermute_reference(x_perm, meta, weights)
    torch.testing.assert_close(y, x * weights.sum(dim=1, keepdim=True))


def test_reference_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    expert_idx = torch.tensor([[0, 2], [2, 3], [0, 3], [2, 0], [3, 2]])
    x = torch.randn(5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.rand(5, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    y_scale = torch.randn(permuted_rows_bound(5, 2, 4, 4), 3, dtype=torch.float64, generator=gen)

    def roundtrip(x, w):
        x_perm, meta, _, _ = permute_reference(x, expert_idx, 4, 4, out_rows=y_scale.shape[0])
        return unpermute_reference(x_perm * y_scale, meta, w)  # an "expert" that is not identity

    assert torch.autograd.gradcheck(roundtrip, (x, w))


def test_static_out_rows_pads_with_zeros_and_checks_the_bound():
    x = torch.randn(4, 3)
    expert_idx = torch.tensor([[0], [0], [2], [0]], dtype=torch.int32)
    bound = permuted_rows_bound(4, 1, 3, 16)
    x_perm, meta, _, offsets = permute_reference(x, expert_idx, 3, out_rows=bound)
    assert x_perm.shape == (bound, 3) and meta.num_rows == bound
    assert offsets.tolist() == [0, 16, 16, 32]
    assert not x_perm[32:].any()
    with pytest.raises(ValueError, match="out_rows"):
        permute_reference(x, expert_idx, 3, out_rows=bound - 1)


@pytest.mark.triton
@given(routings(), st.sampled_from([torch.float32, torch.bfloat16]), st.booleans())
def test_triton_permute_matches_reference(case, dtype, static):
    x, expert_idx, _, num_experts, align = case
    x = x.to(dtype)
    out_rows = permuted_rows_bound(*expert_idx.shape, num_experts, align) if static else None
    ref = permute_reference(x, expert_idx, num_experts, align, out_rows)
    got = permute_triton(x, expert_idx, num_experts, align, out_rows)
    assert torch.equal(got[0], ref[0])  # a pure copy: bit-exact
    assert torch.equal(got[1].row_map, ref[1].row_map)
    assert torch.equal(got[3], ref[3])


@pytest.mark.triton
@given(routings())
def test_triton_unpermute_and_gradients_match_reference(case):
    x, expert_idx, weights, num_experts, align = case
    outputs, grads = [], []
    for permute, unpermute in ((permute_reference, unpermute_reference),
                               (permute_triton, unpermute_triton)):
        xi, wi = x.clone().requires_grad_(), weights.clone().requires_grad_()
        x_perm, meta, _, _ = permute(xi, expert_idx, num_experts, align)
        y = unpermute(torch.tanh(x_perm) * 3, meta, wi)  # non-linear "experts"
        upstream = torch.linspace(-1, 1, y.numel()).view_as(y)
        outputs.append(y)
        grads.append(torch.autograd.grad(y, (xi, wi), upstream))
    torch.testing.assert_close(outputs[1], outputs[0])
    for got, ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, ref)


@pytest.mark.triton
def test_triton_handles_zero_tokens():
    x = torch.randn(0, 8, requires_grad=True)
    w = torch.rand(0, 2, requires_grad=True)
    x_perm, meta, counts, offsets = permute_triton(x, torch.empty(0, 2, dtype=torch.long), 4)
    assert x_perm.shape == (0, 8) and not counts.any() and not offsets.any()
    y = unpermute_triton(x_perm, meta, w)
    assert y.shape == (0, 8)
    gx, gw = torch.autograd.grad(y.sum(), (x, w))
    assert gx.shape == (0, 8) and gw.shape == (0, 2)


@pytest.mark.triton
def test_triton_rows_wider_than_one_block():
    """H > 1024 exercises the hidden-dim loop (scatter) and the second grid axis (gather)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 1100, generator=gen, requires_grad=True)
    w = torch.rand(3, 2, generator=gen, requires_grad=True)
    expert_idx = torch.tensor([[1, 0], [1, 2], [2, 1]])
    results = []
    for permute, unpermute in ((permute_reference, unpermute_reference),
                               (permute_triton, unpermute_triton)):
        x_perm, meta, _, _ = permute(x, expert_idx, 3)
        y = unpermute(x_perm * 2, meta, w)
        results.append((x_perm, y, *torch.autograd.grad(y.square().sum(), (x, w))))
    for got, ref in zip(results[1], results[0]):
        torch.testing.assert_close(got, ref)
