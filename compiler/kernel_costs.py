"""Measured kernel costs: what `benchmarks/kernels.py` timed on a GPU, as the achieved bandwidth of
each runtime kernel, which the cost model uses instead of its assumed HBM efficiency for the ops
that kernel runs.

Where the file comes from: ``VLAC_KERNEL_COSTS`` names a results file or a directory of them
(``benchmarks/results``); a directory contributes the file measured on the cluster's GPU. Without
the variable, or without a file for that GPU, every kernel stays at the assumed efficiency and the
plan is exactly what it was (no arithmetic changes). The plan's ``kernel_costs`` section says
which source each kernel's cost came from.

Which ops a measurement replaces (the cost model charges memory-bound ops by the bytes they move,
vlac.compiler.profile):
- ``rms_norm``: normalisation nodes when the backbone norm is RMSNorm, and the QK-norms (always
  RMSNorm); LayerNorm runs torch's kernel and keeps the assumed rate;
- ``apply_rope``: the rotary-embedding calls;
- ``moe_permute`` / ``moe_unpermute``: the permutation around dropless experts' grouped GEMMs
  (tokens and padded groups, forward and backward; capacity-factor routing does not run them);
- ``fp8_cast``: the operand casts of FP8 expert GEMMs (vlac.runtime.fp8_experts). The dense FP8
  GEMMs are cast by TransformerEngine / torchao, at the assumed rate;
- ``fp8_blockwise_cast``: not used by training; it fills the FP8 KV cache of generation
  (vlac.runtime.generate).

A kernel's rate comes from its own entries (``kernels == [name]``), preferring forward+backward
timings (the cost model's traffic for these ops is a whole training step's) and, among those, the
largest shape (training tensors are tens of MB, where a streaming kernel runs at its steady
rate). The timing used is the Triton one: the plan records that the program runs the Triton
kernels on the cluster's GPUs (vlac.api.plan). Entries whose Triton output did not match the
reference, or whose Triton timing failed, are not used.

Results file schema (``FORMAT``), written by benchmarks/kernels.py::

    {"format": "vlac-kernel-costs/1", "device": "NVIDIA H100 80GB HBM3", "torch": "2.x",
     "triton": "3.x" | null, "cuda": "12.x" | null, "settings": {...benchmark arguments...},
     "results": [{"case": "rms_norm_fwd_bwd", "kernels": ["rms_norm"], "phase": "forward+backward",
                  "shape": {"tokens": 16384, "hidden": 3072}, "bytes": 4.03e8, "match": true,
                  "seconds": {"triton": 1.6e-4, "torch": 5.2e-4, "compiled": 2.1e-4}}]}

``bytes`` counts each distinct tensor the call reads or writes once (the traffic of an ideal
fused kernel), so bytes / seconds is an achieved bandwidth at most the DRAM rate.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlac.runtime.kernels import KERNELS
from vlac.spec.errors import Issue, SpecError, from_validation_error
from vlac.spec.system import Cluster

from .hardware import HBM_EFF

FORMAT = "vlac-kernel-costs/1"
ENV_VAR = "VLAC_KERNEL_COSTS"
RUNTIME_IMPLEMENTATION = "triton"  # what vlac.runtime.kernels runs on CUDA (plan.kernels)
PHASES = ("forward", "forward+backward")
# kernels whose traffic the step time charges, and why the others have no cost to replace
COSTED = ("rms_norm", "apply_rope", "moe_permute", "moe_unpermute", "fp8_cast")
NOT_COSTED = {
    "fp8_blockwise_cast": "not used by training: it fills the FP8 KV cache of generation; FP8 GEMM inputs are cast "
                          "by TransformerEngine/torchao (dense) or fp8_cast (experts)",
}
QK_NORMS = ("q_norm", "k_norm")
_APPLY_ROPE = re.compile(r"apply_rope(_\d+)?")  # the FX names of the rotary-embedding calls (runtime_kernel)

KernelName = Literal[KERNELS]  # type: ignore[valid-type]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Seconds(_Model):
    """Mean seconds per call of each implementation; null where that timing failed or was not taken."""

    triton: float | None = Field(None, gt=0)
    torch: float | None = Field(None, gt=0)
    compiled: float | None = Field(None, gt=0)


class ResultEntry(_Model):
    case: str = Field(min_length=1, description="benchmark case name")
    kernels: list[KernelName] = Field(min_length=1, description="runtime kernels the case runs")
    phase: Literal[PHASES] = Field(description="forward, or forward+backward")  # type: ignore[valid-type]
    shape: dict[str, int] = Field(default_factory=dict, description="sizes the case ran at")
    bytes: float = Field(gt=0, description="each distinct tensor read or written, once")
    match: bool = Field(description="the Triton output matched the reference")
    seconds: Seconds


class KernelResults(_Model):
    format: Literal[FORMAT] = Field(description="the file format and its version")  # type: ignore[valid-type]
    device: str = Field(min_length=1, description="torch.cuda.get_device_name() of the measuring GPU")
    torch: str
    triton: str | None = None
    cuda: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict, description="the benchmark's arguments")
    results: list[ResultEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_cases(self) -> "KernelResults":
        seen: set[tuple] = set()
        for i, r in enumerate(self.results):
            key = (r.case, tuple(sorted(r.shape.items())))
            if key in seen:
                raise ValueError(f"results[{i}]: case {r.case!r} at shape {r.shape} appears twice; keep one timing per "
                                 f"case and shape")
            seen.add(key)
        return self


def parse_results(data: Any, source: str = "") -> KernelResults:
    """Validate a results mapping; a SpecError names every bad field (e.g. results[2].seconds.triton)."""
    try:
        return KernelResults.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e, KernelResults, data, source) from None


def load_results(path: str | Path) -> KernelResults:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError([Issue(ENV_VAR, f"no kernel cost file at {path}; point it at a file or directory that "
                                        f"benchmarks/kernels.py wrote (benchmarks/results)")]) from None
    except json.JSONDecodeError as e:
        raise SpecError([Issue("", f"not JSON ({e}); write it with benchmarks/kernels.py")], str(path)) from None
    return parse_results(data, str(path))


# ---- matching a measuring device to the cluster's GPU -------------------------------------------
_MODEL = re.compile(r"\b([a-z]{1,3}\d{2,4})\b")
_MEMORY = re.compile(r"\b(\d+)\s*gb\b")
_FORM_FACTORS = ("pcie", "nvl")


def gpu_matches(device: str, gpu: str) -> bool:
    """Whether `device` (torch's name, "NVIDIA H100 80GB HBM3") is the cluster's `gpu` (the preset
    name, "H100-SXM"): the same model number, the same memory size where both name one, and no
    PCIe/NVL variant on one side only (an H100 PCIe has 2/3 of the SXM part's bandwidth)."""
    d, g = (re.sub(r"[-_]", " ", s.lower()) for s in (device, gpu))
    models_d, models_g = _MODEL.findall(d), _MODEL.findall(g)
    if not models_d or not models_g or models_d[0] != models_g[0]:
        return False
    mem_d, mem_g = _MEMORY.findall(d), _MEMORY.findall(g)
    if mem_d and mem_g and mem_d[0] != mem_g[0]:
        return False
    return all((ff in d.split()) == (ff in g.split()) for ff in _FORM_FACTORS)


# ---- rates ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeasuredRate:
    kernel: str
    case: str
    phase: str
    shape: dict[str, int]
    bytes: float
    seconds: float

    @property
    def bandwidth(self) -> float:
        """Achieved bytes per second."""
        return self.bytes / self.seconds


@dataclass(frozen=True)
class KernelCosts:
    """Seconds of the memory-bound traffic of each runtime kernel on one GPU: measured where a
    results file for that GPU has the kernel, the assumed streaming efficiency otherwise."""

    hbm_bandwidth: float  # bytes/s, the cluster GPU's
    measured: dict[str, MeasuredRate] = field(default_factory=dict)
    file: dict[str, Any] | None = None  # name, sha256, device, versions, applied, note

    def is_measured(self, kernel: str) -> bool:
        return kernel in self.measured

    def seconds(self, kernel: str, nbytes):
        """Seconds to move `nbytes` (scalar or numpy array) through `kernel`."""
        rate = self.measured.get(kernel)
        bandwidth = rate.bandwidth if rate else self.hbm_bandwidth * HBM_EFF
        return nbytes / bandwidth

    def describe(self, present: frozenset[str] | set[str] = frozenset(COSTED)) -> dict[str, Any]:
        """The plan's `kernel_costs` section: the file, and per kernel where its cost came from
        (`present`: the costed kernels the model's graph runs)."""
        kernels: dict[str, Any] = {}
        for name in KERNELS:
            if name in NOT_COSTED:
                kernels[name] = {"source": "not costed", "reason": NOT_COSTED[name]}
            elif name not in present:
                kernels[name] = {"source": "not in this model"}
            elif name in self.measured:
                r = self.measured[name]
                kernels[name] = {"source": "measured", "case": r.case, "phase": r.phase, "shape": dict(r.shape),
                                 "implementation": RUNTIME_IMPLEMENTATION, "bandwidth_gb_s": r.bandwidth / 1e9,
                                 "hbm_efficiency": r.bandwidth / self.hbm_bandwidth}
            else:
                kernels[name] = {"source": "assumed", "bandwidth_gb_s": self.hbm_bandwidth * HBM_EFF / 1e9,
                                 "hbm_efficiency": HBM_EFF}
        return {"file": dict(self.file) if self.file else None, "kernels": kernels}


def measured_rates(results: KernelResults) -> dict[str, MeasuredRate]:
    """Each costed kernel's rate from its own entries (see the module docstring for the choice)."""
    rates: dict[str, MeasuredRate] = {}
    for name in COSTED:
        usable = [r for r in results.results
                  if r.kernels == [name] and r.match and getattr(r.seconds, RUNTIME_IMPLEMENTATION) is not None]
        if not usable:
            continue
        best = max(usable, key=lambda r: (PHASES.index(r.phase), r.bytes))
        rates[name] = MeasuredRate(name, best.case, best.phase, dict(best.shape), best.bytes,
                                   getattr(best.seconds, RUNTIME_IMPLEMENTATION))
    return rates


def kernel_costs_for(cluster: Cluster, path: str | Path | None = None) -> KernelCosts:
    """The kernel costs of `cluster`'s GPU from `path`, else from $VLAC_KERNEL_COSTS, else assumed."""
    where = path if path is not None else os.environ.get(ENV_VAR) or None
    if where is None:
        return KernelCosts(cluster.gpu.memory_bandwidth)
    p = Path(where)
    files = sorted(p.glob("kernels-*.json")) if p.is_dir() else [p]
    return _from_files(tuple(_fingerprint(f) for f in files), cluster.gpu.name, cluster.gpu.memory_bandwidth, str(p))


def _fingerprint(path: Path) -> tuple[str, int, int]:
    """(path, mtime, size): the cache key of a parsed file, so an edited file is read again."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SpecError([Issue(ENV_VAR, f"no kernel cost file at {path}; point it at a file or directory that "
                                        f"benchmarks/kernels.py wrote (benchmarks/results)")]) from None
    return str(path), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=32)
def _from_files(files: tuple[tuple[str, int, int], ...], gpu: str, hbm_bandwidth: float, where: str) -> KernelCosts:
    if not files:
        note = f"{where} holds no kernels-*.json file; every kernel at the assumed HBM efficiency"
        return KernelCosts(hbm_bandwidth, file={"name": where, "applied": False, "note": note})
    loaded = [(Path(f), load_results(f)) for f, _, _ in files]
    matching = [(f, r) for f, r in loaded if gpu_matches(r.device, gpu)]
    if not matching:
        devices = ", ".join(sorted({r.device for _, r in loaded}))
        f, r = loaded[0]
        info = _file_info(f, r)
        info.update(applied=False, note=f"measured on {devices}, not on the cluster's {gpu}; every kernel at the "
                                        f"assumed HBM efficiency (run benchmarks/kernels.py on a {gpu})")
        return KernelCosts(hbm_bandwidth, file=info)
    f, r = matching[0]  # sorted by file name: the same directory always gives the same file
    rates = measured_rates(r)
    info = _file_info(f, r)
    missing = [k for k in COSTED if k not in rates]
    note = (f"no usable timing for {', '.join(missing)} (missing, failed or not matching the reference): assumed"
            if missing else "all costed kernels measured")
    info.update(applied=bool(rates), note=note)
    return KernelCosts(hbm_bandwidth, rates, info)


def _file_info(path: Path, r: KernelResults) -> dict[str, Any]:
    """What the plan records of a file: its name and content hash (not its absolute path, so the
    same file gives the same plan wherever it lies), the device and the versions."""
    return {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "device": r.device,
            "torch": r.torch, "triton": r.triton}


def runtime_kernel(kind: str, module: str, name: str, norm: str) -> str | None:
    """The runtime kernel a graph node runs, among those a measurement can re-cost (COSTED):
    `kind`, `module` path and node `name` of a NodeCost, `norm` the backbone's norm type."""
    if kind == "norm":
        rms = norm == "rmsnorm" or module.rsplit(".", 1)[-1] in QK_NORMS
        return "rms_norm" if rms else None
    if kind == "elementwise" and _APPLY_ROPE.fullmatch(name.rsplit(".", 1)[-1]):
        return "apply_rope"
    return None


__all__ = ["COSTED", "ENV_VAR", "KernelCosts", "KernelResults", "MeasuredRate", "NOT_COSTED", "FORMAT",
           "gpu_matches", "kernel_costs_for", "load_results", "measured_rates", "parse_results", "runtime_kernel"]
