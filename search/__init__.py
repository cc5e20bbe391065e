"""vlac.search: architecture search, the model and its parallel plan optimised together.

    s = vlac.search("examples/vla_10b_moe_h100.yaml",
                    {"moe.experts": [8, 16, 32, 64], "backbone.layers": [16, 24, 32]},
                    objective="min:training_days", constraints=["params_active >= 2B"])
    s.best, s.pareto(), s.write("search-out")

Depends on vlac.spec and vlac.compiler only; `vlac search` (vlac/search_cli.py) is a thin layer
over it. See vlac.search.session for the Search class and its ask/tell interface.
"""

from .evaluate import STATUSES, Evaluator, Result
from .front import DEFAULT_EPSILON, pareto_front
from .metrics import CHINCHILLA, METRICS, Constraint, Objective, ScalingLaw
from .pool import Progress, default_workers, evaluate_all
from .session import Search, search
from .space import Candidate, SearchError, Space
from .strategies import STRATEGIES

__all__ = ["CHINCHILLA", "DEFAULT_EPSILON", "METRICS", "STATUSES", "STRATEGIES", "Candidate", "Constraint", "Evaluator",
           "Objective", "Progress", "Result", "ScalingLaw", "Search", "SearchError", "Space", "default_workers",
           "evaluate_all", "pareto_front", "search"]
