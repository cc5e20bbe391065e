"""Numerics of a run, chosen at run time from the device and the plan.

compute dtype   CUDA: bf16 autocast when the spec asks for bf16 (parameters and optimiser state
                stay fp32); CPU: fp32 (bf16 matmul on CPUs is about a hundred times slower).
FP8             the GEMMs the plan marks (plan.json "fp8" -> "gemms", one decision per GEMM):
                CUDA: TransformerEngine `te.Linear` under `fp8_autocast` with the plan's recipe
                      (imported only here, only when a CUDA run enables FP8; torchao when
                      TransformerEngine is not installed);
                CPU:  torchao float8 training (`Float8Linear`, dynamic scaling, torch._scaled_mm),
                      the same casts and scaled GEMMs, so FP8 numerics can be checked without a GPU.
                TransformerEngine's delayed scaling has no torchao counterpart (torchao scales from
                the current amax): on CPU, delayed and current scaling both run as tensorwise
                dynamic scaling, block and MXFP8 as rowwise scaling.
FP8 with tensor parallelism (plan.tp > 1): torchao on every device. `te.Linear` keeps plain
                weights and splits itself (its own tp_group / sequence_parallel arguments); it is
                not a module DTensor's `parallelize_module` can shard, whereas a torchao
                `Float8Linear` is an nn.Linear that the Float8 colwise/rowwise styles shard (and
                whose tensorwise scales are then reduced over the whole DTensor, so each GEMM is
                scaled as in one process). Conversion therefore runs before tensor parallelism.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
import torch.nn as nn

from vlac.spec import Experiment

from .fp8_experts import convert_grouped_experts, fp8_expert_names

FP8_BACKENDS = ("none", "torchao", "transformer_engine")
TORCHAO_RECIPE = {"DelayedScaling": "tensorwise", "Float8CurrentScaling": "tensorwise",
                  "Float8BlockScaling": "rowwise", "MXFP8BlockScaling": "rowwise"}
TE_RECIPES = ("DelayedScaling", "Float8CurrentScaling", "Float8BlockScaling", "MXFP8BlockScaling")
FP8_ALIGN = 16  # FP8 GEMMs need both dims of the weight to be multiples of 16


def transformer_engine_installed() -> bool:
    """Whether TransformerEngine can be imported (checked without importing it)."""
    return importlib.util.find_spec("transformer_engine") is not None


def fp8_backend(device_type: str, enabled: bool, prefer: str = "auto", te_installed: bool | None = None,
                tp: int = 1) -> str:
    """Which FP8 implementation a run uses: none when the plan has FP8 off; on CUDA
    TransformerEngine, or torchao when TransformerEngine is not installed or the plan splits the
    GEMMs with tensor parallelism (`tp` > 1, see the module docstring); torchao elsewhere.
    `prefer` (a backend name, or the VLAC_FP8_BACKEND environment variable) overrides the choice."""
    if prefer == "auto":
        prefer = os.environ.get("VLAC_FP8_BACKEND", "auto")
    if prefer not in ("auto",) + FP8_BACKENDS:
        raise ValueError(f"fp8 backend {prefer!r}; choose one of auto, {', '.join(FP8_BACKENDS)}")
    if not enabled:
        return "none"
    if prefer != "auto":
        if prefer == "transformer_engine" and device_type != "cuda":
            raise ValueError("the transformer_engine FP8 backend needs a CUDA device; use torchao on CPU")
        if prefer == "transformer_engine" and tp > 1:
            raise ValueError(f"the transformer_engine FP8 backend does not compose with the DTensor tensor "
                             f"parallelism of this runtime (plan.tp = {tp}); use the torchao backend "
                             f"(VLAC_FP8_BACKEND=torchao, or auto) or re-plan with --pin tp=1")
        return prefer
    if device_type != "cuda" or tp > 1:
        return "torchao"
    installed = transformer_engine_installed() if te_installed is None else te_installed
    return "transformer_engine" if installed else "torchao"


def _flat(name: str) -> str:
    return name.replace(".", "_")


def _names_match(node: str, module: str) -> bool:
    """Plan nodes are named like FX nodes of the traced objective (`model.layers.3.attn_wq`,
    `model_head`): the module's name with dots or underscores, possibly under a prefix."""
    n, m = _flat(node), _flat(module)
    return n == m or n.endswith("_" + m)


def fp8_module_names(model: nn.Module, plan: dict[str, Any]) -> list[str]:
    """nn.Linear modules of `model` whose GEMM the plan runs in FP8. (The grouped expert GEMMs
    the plan may also mark stay in the compute dtype: they are batched matmuls, not Linear.)
    Under tensor parallelism either dimension of a weight may be split tp ways, and the local
    GEMM must still be aligned: both dimensions must then be multiples of 16 * tp."""
    align = FP8_ALIGN * plan.get("plan", {}).get("tp", 1)
    gemms = [g for g in plan.get("fp8", {}).get("gemms", []) if g.get("fp8")]
    # the module path the compiler traced (under the objective's `model.`), else the FX node name
    exact = {g["module"].removeprefix("model.") for g in gemms if g.get("module")}
    chosen = [g["node"] for g in gemms if not g.get("module")]
    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and (name in exact or any(_names_match(node, name) for node in chosen)):
            if mod.in_features % align or mod.out_features % align:
                continue  # the planner checks this too; a model change must not crash the GEMM
            names.append(name)
    return names


@dataclass
class Precision:
    device: torch.device
    dtype: str  # "fp32" | "bf16": the autocast dtype of forward on CUDA
    fp8: str  # one of FP8_BACKENDS
    recipe: dict[str, Any] = field(default_factory=dict)
    converted: list[str] = field(default_factory=list)
    _te_recipe: Any = None

    @classmethod
    def for_run(cls, exp: Experiment, plan: dict[str, Any], device: torch.device, prefer_fp8: str = "auto") -> "Precision":
        enabled = bool(plan["plan"].get("fp8"))
        dtype = exp.precision.dtype if device.type == "cuda" else "fp32"
        tp = plan["plan"].get("tp", 1)
        backend = fp8_backend(device.type, enabled, prefer_fp8, tp=tp)
        recipe = dict(plan.get("fp8", {}).get("recipe", {}))
        name = recipe.get("name", "Float8CurrentScaling")
        if backend == "torchao" and tp > 1 and TORCHAO_RECIPE.get(name) == "rowwise":
            # a row-wise split GEMM contracts over a sharded dimension: torchao would take each
            # row's scale from this rank's slice of it, not from the whole row
            raise ValueError(f"plan fp8.recipe.name = {name!r} (torchao rowwise scaling) with plan.tp = {tp}: the "
                             f"per-row FP8 scales of a row-wise split GEMM would differ from one process's; use "
                             f"precision.fp8.recipe: current or delayed (tensorwise), or re-plan with --pin tp=1")
        return cls(device, dtype, backend, recipe)

    # ---- model conversion ---------------------------------------------------------------------
    def convert(self, model: nn.Module, plan: dict[str, Any] | None = None, names: list[str] | None = None) -> list[str]:
        """Swap the planned GEMMs for their FP8 version; returns the converted module names: the
        nn.Linear modules (`names`, else those plan.json marks) through the backend, and the MoE
        expert GEMMs the plan marks through vlac's own FP8 grouped GEMM (vlac.runtime.fp8_experts;
        neither backend converts stacked expert weights)."""
        if self.fp8 == "none":
            return []
        experts = fp8_expert_names(model, plan) if plan is not None and names is None else []
        if names is None:
            names = fp8_module_names(model, plan or {})
        if self.fp8 == "torchao":
            self._convert_torchao(model, set(names))
        else:
            self._convert_te(model, names)
        convert_grouped_experts(model, experts, self.recipe or {"name": "Float8CurrentScaling"})
        self.converted = list(names) + experts
        return self.converted

    def _convert_torchao(self, model: nn.Module, names: set[str]) -> None:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        recipe = TORCHAO_RECIPE.get(self.recipe.get("name", "Float8CurrentScaling"), "tensorwise")
        config = Float8LinearConfig.from_recipe_name(recipe)
        if self.recipe.get("format") == "E4M3":  # E4M3 everywhere instead of E5M2 gradients
            e4m3 = torch.float8_e4m3fn
            config = _replace_grad_dtype(config, e4m3)
        convert_to_float8_training(model, config=config, module_filter_fn=lambda mod, fqn: fqn in names)

    def _convert_te(self, model: nn.Module, names: list[str]) -> None:
        import transformer_engine.pytorch as te

        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            old: nn.Linear = getattr(parent, child)
            new = te.Linear(old.in_features, old.out_features, bias=old.bias is not None,
                            params_dtype=old.weight.dtype, device=old.weight.device)
            with torch.no_grad():
                new.weight.copy_(old.weight)
                if old.bias is not None:
                    new.bias.copy_(old.bias)
            setattr(parent, child, new)
        self._te_recipe = te_recipe(self.recipe)

    # ---- forward ------------------------------------------------------------------------------
    def forward_context(self) -> ContextManager:
        """Wraps every forward pass (backward runs outside it)."""
        stack = contextlib.ExitStack()
        if self.device.type == "cuda" and self.dtype == "bf16":
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        if self.fp8 == "transformer_engine":
            import transformer_engine.pytorch as te

            stack.enter_context(te.fp8_autocast(enabled=True, fp8_recipe=self._te_recipe))
        return stack

    def describe(self) -> str:
        fp8 = f", FP8 via {self.fp8} on {len(self.converted)} GEMMs" if self.fp8 != "none" else ""
        return f"{self.dtype} on {self.device.type}{fp8}"


def te_recipe(recipe: dict[str, Any]):
    """The TransformerEngine recipe object of plan.json's fp8 recipe."""
    from transformer_engine.common import recipe as te_r

    name = recipe.get("name", "DelayedScaling")
    if name not in TE_RECIPES:
        raise ValueError(f"plan fp8.recipe.name = {name!r}; TransformerEngine recipes: {', '.join(TE_RECIPES)}")
    fmt = te_r.Format.HYBRID if recipe.get("format", "HYBRID") == "HYBRID" else te_r.Format.E4M3
    if name == "DelayedScaling":
        return te_r.DelayedScaling(margin=recipe.get("margin", 0), fp8_format=fmt,
                                   amax_history_len=recipe.get("amax_history_len", 1024),
                                   amax_compute_algo=recipe.get("amax_compute_algo", "max"))
    if name == "Float8CurrentScaling":
        return te_r.Float8CurrentScaling(fp8_format=fmt)
    # block and MX scaling are E4M3 in both directions
    return getattr(te_r, name)(fp8_format=te_r.Format.E4M3)


def _replace_grad_dtype(config, dtype):
    import dataclasses

    changes: dict[str, Callable] = {}
    for f in ("cast_config_grad_output", "cast_config_grad_output_for_grad_weight"):
        cc = getattr(config, f)
        if cc is not None:
            changes[f] = dataclasses.replace(cc, target_dtype=dtype)
    return dataclasses.replace(config, **changes)
