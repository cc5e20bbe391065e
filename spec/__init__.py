"""vlac.spec: the typed experiment spec, its loader and its errors.

The names are imported on first use, so importing a plain-data module of the package (such as
vlac.spec.hardware_presets, which `vlac --help` reads) does not build the pydantic models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import Issue, SpecError
    from .experiment import Experiment, VocabLayout
    from .loader import dump, load, resolve_mapping
    from .overrides import apply_overrides, deep_merge
    from .spec_files import read_mapping

# public name -> module that defines it
_LAZY = {"Issue": ".errors", "SpecError": ".errors", "Experiment": ".experiment", "VocabLayout": ".experiment",
         "dump": ".loader", "load": ".loader", "resolve_mapping": ".loader", "apply_overrides": ".overrides",
         "deep_merge": ".overrides", "read_mapping": ".spec_files"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:  # also how `from vlac.spec import loader` falls back to importing the submodule
        raise AttributeError(f"module 'vlac.spec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Experiment", "Issue", "SpecError", "VocabLayout", "apply_overrides", "deep_merge", "dump", "load", "read_mapping", "resolve_mapping"]
