"""Building the runtime's model and objective on the meta device, quickly.

The compiler lowers exactly what `vlac.runtime.model.build_model(exp, "meta")` builds; nothing
here changes the modules. What it avoids is repeated work: constructing a deep model on meta runs
the same small ops in every layer (RoPE tables, initialisers), each dispatched through a Python
reference kernel, and for an 80-layer model that was most of the lowering time. On meta an op's
result is fully determined by its arguments' metadata, so inside `MetaConstruction`
- in-place initialisers and other data-only in-place ops return their input untouched (there
  is no data to write);
- any other op whose arguments are plain meta tensors and hashable values, and whose result is a
  new plain tensor (no view of an input, not a Parameter), is answered from the first result with
  the same arguments: a fresh tensor of the same shape, strides and dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from vlac.runtime.losses import Objective
from vlac.runtime.model import build_model
from vlac.spec import Experiment

_DATA_ONLY_INPLACE = frozenset(getattr(torch.Tensor, name) for name in (
    "uniform_", "normal_", "fill_", "zero_", "random_", "bernoulli_", "exponential_", "cauchy_", "log_normal_",
    "geometric_", "erfinv_", "clamp_", "clamp_min_", "clamp_max_", "mul_", "add_", "sub_", "div_", "copy_",
    "masked_fill_", "exp_"))


class _Unhashable(Exception):
    pass


def _key(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        if type(value) is not torch.Tensor or not value.is_meta:
            raise _Unhashable
        return ("tensor", tuple(value.shape), value.stride(), value.dtype, value.requires_grad)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, *(_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", *((k, _key(v)) for k, v in sorted(value.items())))
    try:
        hash(value)
    except TypeError:
        raise _Unhashable from None
    return value


class MetaConstruction(TorchFunctionMode):
    """See the module docstring; use around code that only builds modules on meta."""

    def __init__(self):
        super().__init__()
        self.results: dict[Any, tuple[tuple[int, ...], tuple[int, ...], torch.dtype]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DATA_ONLY_INPLACE and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        try:
            key = (func, _key(args), _key(kwargs))
        except _Unhashable:
            return func(*args, **kwargs)
        known = self.results.get(key)
        if known is not None:
            shape, stride, dtype = known
            return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
        out = func(*args, **kwargs)
        if type(out) is torch.Tensor and out.is_meta and not out.requires_grad:
            inputs = {a.untyped_storage()._cdata for a in args if isinstance(a, torch.Tensor)}
            if out.untyped_storage()._cdata not in inputs:
                self.results[key] = (tuple(out.shape), out.stride(), out.dtype)
        return out


def build_on_meta(exp: Experiment, dtype: torch.dtype) -> tuple[nn.Module, Objective]:
    """(model, objective) as the runtime builds them, on meta, floating tensors in `dtype`."""
    with MetaConstruction():
        model = build_model(exp, "meta").to(dtype)
        with torch.device("meta"):
            objective = Objective(model, exp)
    return model, objective


__all__ = ["MetaConstruction", "build_on_meta"]
