"""Where and how it runs: parallelism, precision, the cluster and the launcher."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from .base import SlurmWord, SpecModel
from .hardware_presets import FABRICS, GPU_LINKS, PRESET_FIGURES, PRESETS, ring_busbw
from .hardware_presets import PRESET_LINKS, PRESET_SOURCES  # noqa: F401 (importers read the tables here too)
from .type_errors import type_message
from .units import Bandwidth, Bytes, FlopRate, Seconds, parse_bandwidth

Auto = Literal["auto"]


class Parallelism(SpecModel):
    """`auto` lets the planner choose; an integer pins a degree; `max_*` bound the search."""

    dp: Union[Auto, int] = Field("auto", description="data-parallel degree (replicate x shard)")
    tp: Union[Auto, int] = Field("auto", description="tensor-parallel degree")
    pp: Union[Auto, int] = Field("auto", description="pipeline-parallel degree")
    ep: Union[Auto, int] = Field("auto", description="expert-parallel degree")
    cp: Union[Auto, int] = Field("auto", description="context-parallel degree")
    sequence_parallel: Union[Auto, bool] = Field("auto", description="Megatron sequence parallelism with TP")
    zero: Union[Auto, Literal[0, 1, 2, 3]] = Field("auto", description="data-parallel sharding: 0 replicated, 1 optimizer, 2 +gradients, 3 +parameters (FSDP)")
    schedule: Union[Auto, Literal["1f1b", "interleaved_1f1b", "gpipe", "zero_bubble"]] = Field("auto", description="pipeline schedule")
    virtual_stages: Union[Auto, int] = Field("auto", description="virtual pipeline stages per rank (interleaved schedule)")
    microbatch_size: Union[Auto, int] = Field("auto", description="sequences per micro-batch")
    recompute: Union[Auto, Literal["none", "selective", "full"]] = Field("auto", description="activation recompute policy")
    max_tp: int | None = Field(None, ge=1, description="upper bound on tensor parallelism")
    max_pp: int | None = Field(None, ge=1, description="upper bound on pipeline parallelism")

    @field_validator("zero", mode="before")
    @classmethod
    def _zero_stage(cls, v: Any) -> Any:
        # a Literal of ints matches by ==, so even strict validation takes true as stage 1 and 2.0 as 2
        if isinstance(v, (bool, float)):
            fix = (f"write {int(v)} (no decimal point)" if isinstance(v, float) and v in (0, 1, 2, 3)
                   else "write a stage: 0 (replicated), 1 (optimizer), 2 (+gradients), 3 (+parameters) or auto")
            raise ValueError(type_message(["'auto'", "0, 1, 2 or 3"], v, [fix]))
        return v

    @model_validator(mode="after")
    def _positive(self):
        for name in ("dp", "tp", "pp", "ep", "cp", "virtual_stages", "microbatch_size"):
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool) and v < 1:
                raise ValueError(f"{name}: {v} must be a positive integer or \"auto\"")
        return self

    def pinned(self) -> dict[str, Any]:
        """The fields the user fixed (everything not "auto" and not a bound)."""
        skip = {"max_tp", "max_pp"}
        return {k: v for k, v in self.model_dump().items() if k not in skip and v != "auto"}


class FP8(SpecModel):
    """FP8 training, in TransformerEngine's terms."""

    enabled: bool = Field(False, description="train eligible GEMMs in FP8")
    recipe: Literal["delayed", "current", "block", "mxfp8"] = Field("delayed", description="DelayedScaling, Float8CurrentScaling, Float8BlockScaling (1x128 / 128x128), MXFP8BlockScaling (Blackwell only)")
    format: Literal["HYBRID", "E4M3"] = Field("HYBRID", description="HYBRID = E4M3 forward, E5M2 backward")
    margin: int = Field(0, ge=0, description="scaling margin (powers of two) of delayed scaling")
    amax_history_len: int = Field(1024, ge=1, le=2**16, description="amax history length of delayed scaling")
    amax_compute_algo: Literal["max", "most_recent"] = Field("max", description="how the scale is derived from the amax history")
    keep_first_last_bf16: bool = Field(True, description="keep the first and last decoder layers in BF16")


class Precision(SpecModel):
    dtype: Literal["bf16", "fp32"] = Field("bf16", description="compute dtype on GPUs (CPU runs use fp32)")
    fp8: FP8 = Field(FP8(), description="FP8 settings")


class GPU(SpecModel):
    name: str = Field(description="GPU model")
    bf16_flops: FlopRate = Field(description='dense BF16 peak, e.g. "989TFLOPS"')
    fp8_flops: FlopRate = Field(description='dense FP8 peak, e.g. "1979TFLOPS" (0 = no FP8)')
    memory: Bytes = Field(description='HBM capacity, e.g. "80GB"')
    memory_bandwidth: Bandwidth = Field(description='HBM bandwidth, e.g. "3.35TB/s"')
    nvlink_bandwidth: Bandwidth = Field(description='NVLink bandwidth per direction per GPU, e.g. "450GB/s"')


class Network(SpecModel):
    fabric: Literal[tuple(FABRICS)] = Field("ib-ndr", description="inter-node fabric; fills nic_bandwidth unless that is written (ib-ndr/roce-400: 400 Gb/s per NIC, ib-hdr/roce-200: 200 Gb/s)")
    gpu_link: Literal[tuple(GPU_LINKS)] = Field("nvlink4", description="link between GPUs inside a node; fills gpu.nvlink_bandwidth and nvlink_allreduce_busbw unless those are written")
    nics_per_node: int = Field(8, ge=0, description="InfiniBand NICs per node")
    nic_bandwidth: Bandwidth = Field(description='line rate of one NIC, e.g. "400Gb/s"')
    nic_efficiency: float = Field(0.95, gt=0, le=1, description="achievable fraction of NIC line rate (NDR: ~46-49 of 50 GB/s)")
    nvlink_allreduce_busbw: Bandwidth = Field(description='measured NCCL all-reduce bus bandwidth inside a node, e.g. "370GB/s"')
    collective_latency_s: float = Field(20e-6, ge=0, description="fixed cost of one collective (seconds)")


def _fill_links(gpu: dict[str, Any], network: dict[str, Any], given_gpu: dict, given_network: dict) -> None:
    """A fabric or GPU link named in the spec sets the figures it implies, except those written too."""
    fabric = FABRICS.get(given_network.get("fabric")) if isinstance(given_network.get("fabric"), str) else None
    if fabric and "nic_bandwidth" not in given_network:
        network["nic_bandwidth"] = fabric["nic_bandwidth"]
    link = GPU_LINKS.get(given_network.get("gpu_link")) if isinstance(given_network.get("gpu_link"), str) else None
    if link:
        if "nvlink_bandwidth" not in given_gpu:
            gpu["nvlink_bandwidth"] = link["nvlink_bandwidth"]
        if "nvlink_allreduce_busbw" not in given_network:
            try:  # a written rate is still text here; a bad one is reported by its own field's check
                network["nvlink_allreduce_busbw"] = ring_busbw(parse_bandwidth(gpu["nvlink_bandwidth"]))
            except (TypeError, ValueError):
                pass


class Cluster(SpecModel):
    """A preset fills every figure; any figure written in the spec overrides the preset's."""

    preset: Literal[PRESETS] = Field("h100-sxm", description="hardware preset")
    nodes: int = Field(1, ge=1, description="nodes")
    # bounded by itself (experiment.MAX_GPUS) so that a huge one is named here, not as nodes x GPUs
    gpus_per_node: int = Field(8, ge=1, le=2**20, description="GPUs per node (the NVLink domain)")
    gpu: GPU = Field(description="GPU figures (default: the preset's)")
    network: Network = Field(description="interconnect figures (default: the preset's)")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "h100-sxm")
        # an unknown preset is reported by the Literal check with the valid choices; fill from the
        # default meanwhile so that error is not buried under "gpu missing" noise
        base = PRESET_FIGURES.get(preset, PRESET_FIGURES["h100-sxm"]) if isinstance(preset, str) else PRESET_FIGURES["h100-sxm"]
        out = dict(data)
        given = {}
        for section in ("gpu", "network"):
            # only absent or null takes the preset's: `or {}` also let gpu: "" or network: 0 pass unseen
            given[section] = {} if out.get(section) is None else out[section]
            out[section] = {**base[section], **given[section]} if isinstance(given[section], dict) else given[section]
        if all(isinstance(out[k], dict) and isinstance(given[k], dict) for k in ("gpu", "network")):
            _fill_links(out["gpu"], out["network"], given["gpu"], given["network"])
        return out

    @model_validator(mode="after")
    def _nodes_are_connected(self):
        if self.nodes > 1 and self.network.nics_per_node < 1:
            raise ValueError(f"network.nics_per_node: 0 NICs per node leaves the {self.nodes} nodes unconnected; "
                             f"write the node's NIC count (e.g. 4 or 8) or nodes: 1")
        return self

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


class Launcher(SpecModel):
    kind: Literal["local", "slurm"] = Field("local", description="where `vlac submit` sends the job")
    tasks: int = Field(1, ge=1, le=1024, description="local: processes to start")
    partition: SlurmWord | None = Field(None, description="Slurm partition (letters, digits, _ . -; several: comma-separated)")
    account: SlurmWord | None = Field(None, description="Slurm account (letters, digits, _ . -)")
    qos: SlurmWord | None = Field(None, description="Slurm QOS (letters, digits, _ . -)")
    time_limit: Seconds = Field(4 * 3600, gt=0, le=366 * 86400, description='Slurm time limit, e.g. "4h" or "04:00:00" (at most a year)')
    max_requeues: int = Field(3, ge=0, le=1000, description="requeues after preemption or time-out")
