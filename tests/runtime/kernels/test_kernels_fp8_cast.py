"""FP8 casts: Triton (interpreter) bit-exact against the references; reference error bounds."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vlac.runtime.kernels.fp8_cast import (
    FP8_DTYPES,
    blockwise_cast_to_fp8_reference,
    blockwise_cast_to_fp8_triton,
    blockwise_dequantize_reference,
    cast_to_fp8_reference,
    cast_to_fp8_triton,
)

fp8_dtypes = st.sampled_from(list(FP8_DTYPES))


def assert_same_bits(got: torch.Tensor, ref: torch.Tensor) -> None:
    """FP8 outputs must agree bit for bit (NaN-safe, unlike ==)."""
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))


def random_input(seed: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Values over many binades, with exact zeros and values that overflow the FP8 range."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * torch.exp2(torch.randint(-20, 18, shape, generator=gen))
    return x.masked_fill(torch.rand(shape, generator=gen) < 0.1, 0.0).to(dtype)


@pytest.mark.triton
@given(
    st.integers(0, 2**31 - 1), st.integers(0, 2500), fp8_dtypes,
    st.sampled_from([torch.float32, torch.bfloat16]),
    st.sampled_from([1.0, 0.37, 2.0**-10, 300.0]), st.booleans(),
)
def test_triton_per_tensor_cast_is_bit_exact(seed, numel, fp8_dtype, dtype, scale, as_tensor):
    x = random_input(seed, (numel,), dtype)
    scale = torch.tensor(scale) if as_tensor else scale
    got, got_amax = cast_to_fp8_triton(x, scale, fp8_dtype)
    ref, ref_amax = cast_to_fp8_reference(x, scale, fp8_dtype)
    assert_same_bits(got, ref)
    assert torch.equal(got_amax, ref_amax)


@pytest.mark.triton
@pytest.mark.parametrize("fp8_dtype", list(FP8_DTYPES))
def test_triton_per_tensor_cast_rounds_every_fp8_value_and_tie_like_torch(fp8_dtype):
    """Every finite FP8 value, every midpoint between neighbours (ties to even) and the fp32
    values just either side of each midpoint, plus signed zeros and out-of-range values."""
    values = torch.arange(256, dtype=torch.uint8).view(fp8_dtype).float()
    grid = values[values.isfinite()].unique()
    mids = (grid[1:] + grid[:-1]) / 2
    x = torch.cat([
        grid, mids, mids.nextafter(torch.tensor(float("inf"))),
        mids.nextafter(torch.tensor(-float("inf"))), torch.tensor([0.0, -0.0, 1e30, -1e30]),
    ])
    got, _ = cast_to_fp8_triton(x, 1.0, fp8_dtype)
    assert_same_bits(got, cast_to_fp8_reference(x, 1.0, fp8_dtype)[0])


def test_per_tensor_reference_saturates_and_reports_amax():
    x = torch.tensor([1.0, -1000.0, 3.0])
    x_fp8, amax = cast_to_fp8_reference(x, 1.0, torch.float8_e4m3fn)
    assert x_fp8.float().tolist() == [1.0, -448.0, 3.0]
    assert amax.item() == 1000.0 and amax.dtype == torch.float32
    empty_fp8, empty_amax = cast_to_fp8_reference(torch.empty(0), 1.0)
    assert empty_fp8.shape == (0,) and empty_amax.item() == 0.0


@st.composite
def blockwise_cases(draw):
    """Shapes that are not multiples of the block; 1x128 blocks keep rows few (one program each)."""
    block = draw(st.sampled_from([(1, 128), (128, 128)]))
    rows = draw(st.integers(0, 24 if block[0] == 1 else 300))
    cols = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**31 - 1))
    x = random_input(seed, (rows, cols), draw(st.sampled_from([torch.float32, torch.bfloat16])))
    if draw(st.booleans()) and cols > 128:
        x[:, :128] = 0  # whole blocks of zeros: scale must fall back to 1
    return x, block, draw(fp8_dtypes)


@pytest.mark.triton
@given(blockwise_cases())
def test_triton_blockwise_cast_is_bit_exact(case):
    x, block, fp8_dtype = case
    got, got_scales = blockwise_cast_to_fp8_triton(x, block, fp8_dtype)
    ref, ref_scales = blockwise_cast_to_fp8_reference(x, block, fp8_dtype)
    assert_same_bits(got, ref)
    assert torch.equal(got_scales, ref_scales)


@given(blockwise_cases())
def test_blockwise_reference_scales_and_dequantization_error(case):
    x, (bm, bn), fp8_dtype = case
    x_fp8, scales = blockwise_cast_to_fp8_reference(x, (bm, bn), fp8_dtype)
    rows, cols = x.shape
    assert scales.shape == (-(-rows // bm), -(-cols // bn)) and scales.dtype == torch.float32
    fp8_max = torch.finfo(fp8_dtype).max
    mant_bits, min_exp = FP8_DTYPES[fp8_dtype]
    expanded = scales.repeat_interleave(bm, 0).repeat_interleave(bn, 1)[:rows, :cols]
    # Rounding error in the scaled domain: half a step, relative for normals, absolute for subnormals.
    bound = (x.float().abs() * expanded * 2.0 ** -(mant_bits + 1) + 2.0 ** (min_exp - mant_bits - 1))
    error = (blockwise_dequantize_reference(x_fp8, scales, (bm, bn)) - x.float()).abs()
    assert (error <= bound / expanded).all()
    for i in range(scales.shape[0]):  # every non-zero block uses the full FP8 range
        for j in range(scales.shape[1]):
            tile = x_fp8[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn].float().abs()
            assert tile.max() == (fp8_max if tile.any() else 0.0)
            assert tile.any() or scales[i, j] == 1.0


def test_blockwise_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        blockwise_cast_to_fp8_reference(torch.ones(4))
    with pytest.raises(ValueError, match="powers of two"):
        blockwise_cast_to_fp8_reference(torch.ones(4, 4), block=(1, 100))
    with pytest.raises(ValueError, match="fp8_dtype"):
        blockwise_cast_to_fp8_reference(torch.ones(4, 4), fp8_dtype=torch.bfloat16)
