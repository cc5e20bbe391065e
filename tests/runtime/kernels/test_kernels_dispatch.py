"""Dispatch layer: backend choice, validation, and that each public function reaches its kernel."""

import importlib

import pytest
import torch

from vlac.runtime import kernels
from vlac.runtime.kernels._triton import have_triton

# The package attribute `moe_permute` is the public function; the module needs importlib.
moe_module = importlib.import_module("vlac.runtime.kernels.moe_permute")


def calls():
    """One small call per public function, as (name, fn(backend))."""
    x = torch.randn(6, 8)
    idx = torch.tensor([[0, 1], [1, 2], [0, 2], [2, 1], [0, 1], [1, 0]])
    w = torch.rand(6, 2)
    x_perm, meta, _, _ = kernels.moe_permute(x, idx, 3, backend="torch")
    cos, sin = torch.randn(3, 8), torch.randn(3, 8)
    return [
        ("moe_permute", lambda b: kernels.moe_permute(x, idx, 3, 4, backend=b)[0]),
        ("moe_unpermute", lambda b: kernels.moe_unpermute(x_perm, meta, w, backend=b)),
        ("fp8_cast", lambda b: kernels.fp8_cast(x, 2.0, backend=b)[0].float()),
        ("fp8_blockwise_cast", lambda b: kernels.fp8_blockwise_cast(x, (2, 4), backend=b)[0].float()),
        ("rms_norm", lambda b: kernels.rms_norm(x, torch.ones(8), backend=b)),
        ("apply_rope", lambda b: kernels.apply_rope(x.view(1, 3, 2, 8), cos, sin, backend=b)),
    ]


def test_select_backend_covers_every_kernel():
    assert set(kernels.select_backend("cpu").values()) == {"torch"}
    cuda = kernels.select_backend("cuda")
    assert tuple(cuda) == kernels.KERNELS == tuple(name for name, _ in calls())
    assert set(cuda.values()) == {"triton" if have_triton() else "torch"}


@pytest.mark.parametrize("name, fn", calls())
def test_unknown_backend_lists_the_choices(name, fn):
    with pytest.raises(ValueError, match="'auto', 'torch', 'triton'"):
        fn("cuda")


def test_auto_uses_the_reference_for_cpu_tensors_even_under_the_interpreter(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("auto must not pick Triton for CPU tensors")

    monkeypatch.setattr(moe_module, "permute_triton", fail)
    x_perm, *_ = kernels.moe_permute(torch.randn(2, 4), torch.tensor([[0], [1]]), 2)
    assert x_perm.shape == (32, 4)


def test_forcing_triton_without_cuda_or_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not kernels.triton_available(torch.empty(0))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.rms_norm(torch.ones(2, 4), torch.ones(4), backend="triton")


@pytest.mark.triton
@pytest.mark.parametrize("name, fn", calls())
def test_forced_triton_matches_forced_torch(name, fn):
    torch.testing.assert_close(fn("triton"), fn("torch"), rtol=1e-5, atol=1e-5)
