"""vlac: a declarative experiment-graph compiler for unified generation-understanding models.

    exp = vlac.load("examples/tiny_vla.yaml")
    graph = vlac.lower(exp)            # FX graph on meta + per-node costs
    plan = vlac.plan(exp)              # parallel layout, memory, step time, FP8
    prog = vlac.emit(exp, plan, "out") # train.py, launch.py, experiment.yaml, plan.json
    job = vlac.submit(prog, executor="local")
"""

from .api import EXECUTORS, emit, load, lower, plan, submit
from .search import Search, search
from .version import __version__

__all__ = ["EXECUTORS", "Search", "__version__", "emit", "load", "lower", "plan", "search", "submit"]
