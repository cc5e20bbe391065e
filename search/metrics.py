"""What a search ranks and filters on: metrics read off a plan, objectives and constraints.

Every metric is computed from `Plan.to_json()` (the `vlac compile --json` contract) and the
experiment, so a search ranks on exactly the figures `vlac compile` prints.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from vlac.compiler.plan import Plan
from vlac.spec import Experiment
from vlac.spec.units import parse_count

from .space import SearchError, spec_path_problem


@dataclass(frozen=True)
class ScalingLaw:
    """A parametric loss law L(N, D) = E + A / N^alpha + B / D^beta (N parameters, D tokens).

    The `chinchilla_loss` objective is this law with Hoffmann et al.'s fit (CHINCHILLA, below:
    "Training Compute-Optimal Large Language Models", 2022, sec. 3.3, Approach 3), N the active
    parameters per token and D the spec's train.total_tokens; `compute_optimal_ratio` compares N
    with the law's compute-optimal N for the same 6 N D FLOPs. `source` names the fit, and
    results.json records it."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params ** self.alpha + self.B / tokens ** self.beta

    def optimal_params(self, flops: float) -> float:
        """The compute-optimal N for a budget of C = 6 N D training FLOPs (the law's minimum
        along the iso-FLOP curve): N_opt = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta))."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        return g * (flops / 6) ** (self.beta / (self.alpha + self.beta))


# Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla), section 3.3
# (Approach 3, the parametric fit): E = 1.69, A = 406.4, B = 410.7, alpha = 0.34, beta = 0.28, for
# dense text transformers trained on MassiveText, N counting all parameters. For a mixture of experts
# vlac uses the *active* parameters per token (dense parameters + top_k/experts of the expert
# parameters) as N: a common approximation that the fit was never made for, which ignores the
# quality that idle experts add; and multimodal tokens are not MassiveText tokens. Use the value to
# rank candidates of one family, not as a loss forecast.
CHINCHILLA = ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28,
                        source="Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, sec. 3.3")


@dataclass(frozen=True)
class Metric:
    name: str
    direction: str | None  # the usual goal (None: ambiguous, say min: or max:)
    description: str
    fn: Callable[[Experiment, dict[str, Any]], float]


def _pred(key: str) -> Callable[[Experiment, dict[str, Any]], float]:
    return lambda exp, j: j["predicted"][key]


def _model(key: str) -> Callable[[Experiment, dict[str, Any]], float]:
    return lambda exp, j: j["model"][key]


def _chinchilla(exp: Experiment, j: dict[str, Any]) -> float:
    return CHINCHILLA.loss(j["model"]["params_active"], exp.train.total_tokens)


def _compute_optimal_ratio(exp: Experiment, j: dict[str, Any]) -> float:
    n = j["model"]["params_active"]
    return n / CHINCHILLA.optimal_params(6.0 * n * exp.train.total_tokens)


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("tokens_per_s", "max", "predicted training throughput, tokens per second", _pred("tokens_per_s")),
    Metric("step_time_s", "min", "predicted seconds per optimiser step", _pred("step_time_s")),
    Metric("mfu", "max", "predicted model FLOPs utilisation", _pred("mfu")),
    Metric("tflops_per_gpu", "max", "predicted model TFLOP/s per GPU", _pred("tflops_per_gpu")),
    Metric("training_days", "min", "days to train the spec's token budget (train.total_tokens)", _pred("training_days")),
    Metric("gpu_hours", "min", "GPU-hours to train the token budget", _pred("gpu_hours")),
    Metric("peak_memory_gb", "min", "predicted peak memory per GPU, GB", _pred("peak_memory_gb")),
    Metric("params_total", None, "parameters", _model("params_total")),
    Metric("params_active", None, "parameters active per token (experts at top_k/experts)", _model("params_active")),
    Metric("flops_per_token", None, "training FLOPs per token (forward + backward)", _model("flops_per_token")),
    Metric("layers", None, "decoder layers", _model("layers")),
    Metric("gpus", None, "GPUs of the cluster", lambda exp, j: j["cluster"]["gpus"]),
    Metric("tokens", None, "the token budget train.total_tokens", lambda exp, j: exp.train.total_tokens),
    Metric("tokens_per_param", None, "token budget per active parameter (Chinchilla-optimal is ~20)",
           lambda exp, j: exp.train.total_tokens / j["model"]["params_active"]),
    Metric("chinchilla_loss", "min", "L(N_active, D = token budget) of the Chinchilla fit (Hoffmann et al. 2022)",
           _chinchilla),
    Metric("compute_optimal_ratio", None, "N_active / the Chinchilla-optimal N for the same 6*N*D FLOPs "
           "(1 = compute-optimal, above 1 = too large for the token budget)", _compute_optimal_ratio),
)}


def compute_metrics(exp: Experiment, j: dict[str, Any]) -> dict[str, float]:
    return {name: m.fn(exp, j) for name, m in METRICS.items()}


def lookup(name: str, exp: Experiment, j: dict[str, Any], metrics: Mapping[str, float]) -> Any:
    """A metric by name, `spec.PATH` (a field of the experiment) or a dotted path into the plan
    JSON (e.g. `predicted.memory_gb.activations`, `plan.tp`)."""
    if name in metrics:
        return metrics[name]
    if name.startswith("spec."):
        node: Any = exp
        for part in name[5:].split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        return node
    node = j
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SearchError(f"{name!r} is neither a metric ({', '.join(METRICS)}), nor spec.PATH, nor a field of the "
                              f"plan JSON (`vlac compile --json`; top-level keys: {', '.join(sorted(j))})")
        node = node[part]
    return node


def _check_name(name: str, what: str) -> None:
    if name in METRICS:
        return
    if name.startswith("spec."):
        problem = spec_path_problem(name[5:])
        if problem:
            raise SearchError(f"{what} {name!r}: {problem}")
        return
    if "." not in name:
        raise SearchError(f"{what} {name!r} is not a metric; metrics: {', '.join(METRICS)}; or give spec.PATH or a "
                          f"dotted path into the plan JSON such as predicted.memory_gb.activations")


UserFn = Callable[[Experiment, Plan], Any]


@dataclass(frozen=True)
class Objective:
    """What to rank on: a metric, `spec.PATH`, a plan-JSON path, or `fn(experiment, plan)`."""

    name: str
    direction: str
    fn: UserFn | None = None

    @classmethod
    def parse(cls, spec: str | Objective | UserFn | tuple) -> Objective:
        """"max:tokens_per_s", "training_days" (its usual direction), Objective(...), a function
        (maximised; wrap as ("min", fn) to minimise)."""
        if isinstance(spec, Objective):
            return spec
        if isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1]):
            return cls(getattr(spec[1], "__name__", "objective"), _direction(spec[0]), spec[1])
        if callable(spec):
            return cls(getattr(spec, "__name__", "objective"), "max", spec)
        if not isinstance(spec, str) or not spec.strip():
            raise SearchError(f"objective: expected 'min:NAME' or 'max:NAME' or a function, got {spec!r}")
        text = spec.strip()
        direction = None
        if ":" in text:
            head, text = (s.strip() for s in text.split(":", 1))
            direction = _direction(head)
        _check_name(text, "objective")
        if direction is None:
            direction = METRICS[text].direction if text in METRICS else None
            if direction is None:
                raise SearchError(f"objective {text!r} has no usual direction; write min:{text} or max:{text}")
        return cls(text, direction)

    def text(self) -> str:
        return f"{self.direction}:{self.name}"

    def value(self, exp: Experiment, plan: Plan, j: dict[str, Any], metrics: Mapping[str, float]) -> float:
        raw = self.fn(exp, plan) if self.fn is not None else lookup(self.name, exp, j, metrics)
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise SearchError(f"objective {self.name!r} gave {raw!r}, not a number") from None

    def sort_key(self, value: float) -> float:
        """Smaller is better."""
        return value if self.direction == "min" else -value


def _direction(text: Any) -> str:
    if text not in ("min", "max"):
        raise SearchError(f"objective direction {text!r} must be min or max, e.g. max:tokens_per_s")
    return text


OPS: dict[str, Callable[[Any, Any], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq,
                                               "!=": operator.ne, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class Constraint:
    """`NAME OP VALUE` (NAME as for objectives; OP one of <= >= == != < >; VALUE a number, a
    count like 3B, true/false or a word), `fits` (the plan fits in memory: always required), or
    `fn(experiment, plan) -> bool`."""

    text: str
    name: str = ""
    op: str = ""
    value: Any = None
    fn: UserFn | None = None

    @classmethod
    def parse(cls, spec: str | Constraint | UserFn) -> Constraint:
        if isinstance(spec, Constraint):
            return spec
        if callable(spec):
            return cls(getattr(spec, "__name__", "constraint"), fn=spec)
        if not isinstance(spec, str) or not spec.strip():
            raise SearchError(f"constraint: expected 'NAME OP VALUE' (e.g. 'params_active <= 3B') or a function, got {spec!r}")
        text = " ".join(spec.split())
        if text in ("fits", "fits_memory"):
            return cls(text, name="feasible", op="==", value=True)
        for op in sorted(OPS, key=len, reverse=True):  # two-character operators first
            if op in text:
                name, raw = (s.strip() for s in text.split(op, 1))
                break
        else:
            raise SearchError(f"constraint {text!r} has no operator; write NAME OP VALUE with OP one of "
                              f"{' '.join(OPS)}, e.g. 'gpus <= 128'")
        if not name or not raw:
            raise SearchError(f"constraint {text!r}: write NAME OP VALUE, e.g. 'params_active <= 3B'")
        _check_name(name, "constraint")
        value = _value(raw)
        if isinstance(value, str) and op not in ("==", "!="):
            raise SearchError(f"constraint {text!r}: {raw!r} is not a number; ordering needs one (e.g. 3e9, 3B, 70)")
        return cls(text, name=name, op=op, value=value)

    def violation(self, exp: Experiment, plan: Plan, j: dict[str, Any], metrics: Mapping[str, float]) -> str:
        """Why the candidate breaks this constraint ('' when it holds)."""
        return self.check(exp, plan, j, metrics)[0]

    def check(self, exp: Experiment, plan: Plan, j: dict[str, Any], metrics: Mapping[str, float]) -> tuple[str, float]:
        """(why the candidate breaks this constraint or '', by how much): the amount is what
        Optuna's constraints_func expects, <= 0 when the constraint holds; for an ordering it is
        the distance past the bound relative to the bound (so constraints of different units
        weigh alike), otherwise 0 or 1."""
        if self.fn is not None:
            ok = bool(self.fn(exp, plan))
            return ("", 0.0) if ok else (f"{self.text} is false", 1.0)
        actual = lookup(self.name, exp, j, metrics)
        try:
            ok = OPS[self.op](actual, self.value)
        except TypeError:
            raise SearchError(f"constraint {self.text!r}: cannot compare {self.name} = {actual!r} with {self.value!r}") from None
        return ("", 0.0) if ok else (f"{self.name} = {_fmt(actual)} violates {self.text}", self._amount(actual))

    def _amount(self, actual: Any) -> float:
        """How far a broken constraint is from holding (> 0)."""
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (actual, self.value))
        if not numbers or self.op in ("==", "!="):
            return 1.0
        past = (actual - self.value) if self.op in ("<=", "<") else (self.value - actual)
        return max(past / max(abs(self.value), 1e-12), 1e-9)  # a strict bound met exactly is still broken


def _value(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return float(raw) if any(c in low for c in ".e") else int(raw)
    except ValueError:
        pass
    try:
        return parse_count(raw)
    except ValueError:
        return raw


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:,}" if isinstance(x, int) else f"{x:.4g}"


__all__ = ["CHINCHILLA", "Constraint", "METRICS", "Metric", "Objective", "ScalingLaw", "compute_metrics", "lookup"]
