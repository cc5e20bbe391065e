"""The cluster presets: GPU datasheet figures, the links inside a node and the fabrics between
nodes, and each preset's figures built from them. Plain data with no pydantic, so `vlac --help`
can list the presets (PRESETS) without building the spec's models; spec/system.py validates a
cluster against these tables."""

from __future__ import annotations

from typing import Any

# Inter-node fabrics: line rate of one NIC per vendor datasheet. Only NDR's achievable share is
# measured (published-runs.md "Interconnect measurements": 46-49 of 50 GB/s per NIC, hence the
# 0.95 default of nic_efficiency); the others inherit that share, an assumption, not a measurement.
FABRICS: dict[str, dict[str, Any]] = {
    "ib-ndr": {"nic_bandwidth": 50e9, "source": "NVIDIA ConnectX-7 datasheet: InfiniBand NDR, 400 Gb/s per port"},
    "ib-hdr": {"nic_bandwidth": 25e9, "source": "NVIDIA ConnectX-6 VPI datasheet: InfiniBand HDR, 200 Gb/s per port"},
    "roce-400": {"nic_bandwidth": 50e9, "source": "NVIDIA ConnectX-7 datasheet: 400 Gb/s Ethernet (RoCE)"},
    "roce-200": {"nic_bandwidth": 25e9, "source": "NVIDIA ConnectX-6 Dx datasheet: 200 Gb/s Ethernet (RoCE)"},
}
# Links inside a node, per direction per GPU (the datasheets print both directions).
GPU_LINKS: dict[str, dict[str, Any]] = {
    "nvlink4": {"nvlink_bandwidth": 450e9, "source": "NVIDIA H100 datasheet (SXM5): NVLink 900 GB/s"},
    "nvlink4-h800": {"nvlink_bandwidth": 200e9, "source": "NVIDIA H800 product brief: NVLink 400 GB/s"},
    "nvlink3": {"nvlink_bandwidth": 300e9, "source": "NVIDIA A100 datasheet (SXM4): NVLink 600 GB/s"},
    "pcie5": {"nvlink_bandwidth": 64e9, "source": "PCI Express 5.0 x16: 32 GT/s x 16 lanes, 64 GB/s per direction"},
    "pcie4": {"nvlink_bandwidth": 32e9, "source": "PCI Express 4.0 x16: 16 GT/s x 16 lanes, 32 GB/s per direction"},
}

# GPU figures are the vendors' datasheet figures, dense (the datasheets print 2:4-sparse rates,
# twice these): NVIDIA H100 Tensor Core GPU datasheet (SXM5 / PCIe / NVL columns), H200 datasheet,
# A100 datasheet (40 GB / 80 GB SXM4), H800 product brief. The links are not typed here: each
# preset names its GPU link and fabric (PRESET_LINKS), and GPU_LINKS and FABRICS give the link
# rate per direction, the NIC line rate and, from the link rate, `nvlink_allreduce_busbw`: the
# measured NCCL ring all-reduce bus bandwidth of 8 x H100 SXM (published-runs.md "Interconnect
# measurements": 370 GB/s on a 450 GB/s link) as a share of the link rate, which for the other
# links is derived, not measured.
_RING_SHARE = 370e9 / 450e9  # measured busbw / link rate on 8 x H100 SXM


def ring_busbw(link_bandwidth: float) -> float:
    return round(link_bandwidth * _RING_SHARE / 1e9) * 1e9  # whole GB/s: figures round-trip through text


# Memory is what the driver gives a process (nvidia-smi's total), not the datasheet's round figure:
# HBM sold as "80 GB" is 80 GiB of which the driver keeps a little, so 80e9 would understate an
# H100 by 6.6 % and reject layouts that train (docs/fidelity.md, mpt-3b at 8K). Totals as printed
# by nvidia-smi in public logs: H100 SXM5 and PCIe 81,559 MiB (NVIDIA/nccl#1264 and a PCIe log),
# H200 143,771 MiB, A100 80 GB 81,920 MiB, A100 40 GB 40,960 MiB (modal-labs/modal-client#2797);
# H100 NVL 99,961,274,368 bytes (the DRM total, fastfetch-cli/fastfetch#1658). H800 is the H100's
# HBM3 part. Allocator fragmentation and the CUDA context come off these in compiler/hardware.py.
MIB = 2**20
_H100 = {"name": "H100-SXM", "bf16_flops": 989e12, "fp8_flops": 1979e12, "memory": 81_559 * MIB,
         "memory_bandwidth": 3.35e12}
_A100_40 = {"name": "A100-40GB-SXM", "bf16_flops": 312e12, "fp8_flops": 0.0, "memory": 40_960 * MIB,
            "memory_bandwidth": 1.555e12}
_GPUS: dict[str, dict[str, Any]] = {
    "h100-sxm": _H100,
    "h200": {**_H100, "name": "H200", "memory": 143_771 * MIB, "memory_bandwidth": 4.8e12},
    # H800 SXM: H100 compute and memory, NVLink cut to 400 GB/s both directions (DeepSeek-V3's GPUs)
    "h800-sxm": {**_H100, "name": "H800-SXM"},
    # PCIe cards: 114 SMs at 350 W, HBM2e; NVLink bridges join pairs, so the node's collectives
    # run over PCIe Gen5 x16
    "h100-pcie": {"name": "H100-PCIe", "bf16_flops": 756e12, "fp8_flops": 1513e12, "memory": 81_559 * MIB,
                  "memory_bandwidth": 2.0e12},
    "h100-nvl": {"name": "H100-NVL", "bf16_flops": 835e12, "fp8_flops": 1670e12, "memory": 99_961_274_368,
                 "memory_bandwidth": 3.9e12},
    "a100-40gb": _A100_40,
    "a100-80gb": {**_A100_40, "name": "A100-80GB-SXM", "memory": 81_920 * MIB, "memory_bandwidth": 2.039e12},
}
# Each preset's links and the datasheets its figures come from (tests check every preset has both).
PRESET_LINKS: dict[str, tuple[str, str]] = {
    "h100-sxm": ("nvlink4", "ib-ndr"), "h200": ("nvlink4", "ib-ndr"), "h800-sxm": ("nvlink4-h800", "ib-ndr"),
    "h100-pcie": ("pcie5", "ib-ndr"), "h100-nvl": ("pcie5", "ib-ndr"),
    "a100-40gb": ("nvlink3", "ib-hdr"), "a100-80gb": ("nvlink3", "ib-hdr"),
}
PRESET_SOURCES: dict[str, str] = {
    "h100-sxm": "NVIDIA H100 Tensor Core GPU datasheet, SXM5 column; busbw: published-runs.md Interconnect measurements",
    "h200": "NVIDIA H200 Tensor Core GPU datasheet (141 GB HBM3e, 4.8 TB/s; H100 SXM5 compute)",
    "h800-sxm": "NVIDIA H800 product brief (H100 SXM5 compute and memory, NVLink 400 GB/s)",
    "h100-pcie": "NVIDIA H100 Tensor Core GPU datasheet, PCIe column",
    "h100-nvl": "NVIDIA H100 Tensor Core GPU datasheet, H100 NVL column (94 GB, 3.9 TB/s)",
    "a100-40gb": "NVIDIA A100 Tensor Core GPU datasheet, 40 GB SXM4 column",
    "a100-80gb": "NVIDIA A100 Tensor Core GPU datasheet, 80 GB SXM4 column",
}


def _preset(gpu: dict[str, Any], link: str, fabric: str) -> dict[str, Any]:
    """A preset's GPU and network figures, its link rates read from GPU_LINKS and FABRICS."""
    rate = GPU_LINKS[link]["nvlink_bandwidth"]
    return {"gpu": {**gpu, "nvlink_bandwidth": rate},
            "network": {"gpu_link": link, "fabric": fabric, "nic_bandwidth": FABRICS[fabric]["nic_bandwidth"],
                        "nvlink_allreduce_busbw": ring_busbw(rate)}}


PRESET_FIGURES: dict[str, dict[str, Any]] = {name: _preset(gpu, *PRESET_LINKS[name]) for name, gpu in _GPUS.items()}
PRESETS = tuple(PRESET_FIGURES)
