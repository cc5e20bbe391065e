"""vlac: a declarative experiment-graph compiler for unified generation-understanding models.

    exp = vlac.load("examples/tiny_vla.yaml")
    graph = vlac.lower(exp)            # FX graph on meta + per-node costs
    plan = vlac.plan(exp)              # parallel layout, memory, step time, FP8
    prog = vlac.emit(exp, plan, "out") # train.py, launch.py, experiment.yaml, plan.json
    job = vlac.submit(prog, executor="local")

The names are imported on first use: `import vlac` (and the `vlac` command's start-up) does not
import torch; `vlac.plan` and the others bring in what they need when called.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from .version import __version__

# public name -> module that defines it
_LAZY = {"EXECUTORS": ".executors", "emit": ".api", "load": ".api", "lower": ".api", "plan": ".api", "submit": ".api",
         "follow": ".follow", "Search": ".search", "search": ".search"}


class _CallableModule(types.ModuleType):
    """vlac.search and vlac.follow are modules and also the functions `vlac.search(spec, space)`
    and `vlac.follow(job, metrics)`: such a module, once imported, calls its namesake function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


class _Vlac(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("search", "follow") and isinstance(value, types.ModuleType):  # the import system binds it
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Vlac


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vlac' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if name in ("search", "follow") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["EXECUTORS", "Search", "__version__", "emit", "follow", "load", "lower", "plan", "search", "submit"]
