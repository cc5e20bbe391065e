"""RoPE: reference against complex rotation, gradcheck, Triton (interpreter) against the reference."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vlac.runtime.kernels.rope import apply_rope_reference, apply_rope_triton


def rope_tables(seq: int, dim: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard cos/sin tables [S, D] with the two halves repeated."""
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(seq, dtype=torch.float64), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def test_reference_is_a_complex_rotation_of_the_two_halves():
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    cos, sin = rope_tables(5, 8, torch.float64)
    half = x[..., :4] + 1j * x[..., 4:]
    angle = torch.complex(cos[:, :4], sin[:, :4])[None, :, None, :]
    rotated = half * angle
    expected = torch.cat((rotated.real, rotated.imag), dim=-1)
    torch.testing.assert_close(apply_rope_reference(x, cos, sin), expected)


def test_reference_gradcheck_float64():
    x = torch.randn(1, 3, 2, 6, dtype=torch.float64, requires_grad=True)
    cos, sin = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: apply_rope_reference(t, cos, sin), (x,))


@pytest.mark.triton
@given(
    st.integers(1, 2), st.integers(1, 5), st.integers(1, 4), st.integers(1, 10),
    st.booleans(), st.integers(0, 2**31 - 1),
)
def test_triton_forward_and_backward_match_reference(batch, seq, heads, half, strided, seed):
    """Arbitrary (asymmetric) cos/sin tables, and x as a strided view like q out of a fused qkv."""
    gen = torch.Generator().manual_seed(seed)
    dim = 2 * half
    cos, sin = torch.randn(seq, dim, generator=gen), torch.randn(seq, dim, generator=gen)
    upstream = torch.randn(batch, seq, heads, dim, generator=gen)
    base = torch.randn(batch, seq, 3 * heads if strided else heads, dim, generator=gen)
    results = []
    for fn in (apply_rope_reference, apply_rope_triton):
        leaf = base.clone().requires_grad_()
        x = leaf[:, :, heads:2 * heads] if strided else leaf
        y = fn(x, cos, sin)
        results.append((y, *torch.autograd.grad(y, (leaf,), upstream)))
    for got, ref in zip(results[1], results[0]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.triton
def test_triton_bf16_matches_reference():
    x = torch.randn(2, 7, 4, 16).bfloat16()
    cos, sin = rope_tables(7, 16)
    y = apply_rope_triton(x, cos, sin)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, apply_rope_reference(x, cos, sin))


def test_shape_errors_name_the_expected_layout():
    cos, sin = rope_tables(4, 8)
    with pytest.raises(ValueError, match="even D"):
        apply_rope_triton(torch.ones(1, 4, 2, 7), cos, sin)
    with pytest.raises(ValueError, match=r"\[S, D\]"):
        apply_rope_reference(torch.ones(1, 5, 2, 8), cos, sin)
