"""The cluster as the cost model sees it: peak rates, achievable efficiencies, collectives.

Calibration choices (stated, so they can be argued with):
- GEMM efficiency: large BF16 GEMMs on H100 SXM reach ~70-80 % of the 989 TFLOP/s peak in
  cuBLAS; small ones fall off. We model eff = GEMM_EFF_MAX * size / (size + GEMM_HALF_SIZE) with
  size = M*N*K, which matches that plateau and the fall-off of narrow GEMMs.
- FP8 GEMMs reach a lower fraction of their doubled peak (scaling and casts around them).
- Fused attention (FlashAttention-2/3, cuDNN) runs at ~55-60 % of BF16 peak on H100.
- Collectives: bus bandwidth from the preset (NCCL all-reduce ~370 GB/s inside a node; one NIC
  at ~95 % of line rate between nodes) plus a fixed latency per collective.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlac.spec.system import Cluster

GEMM_EFF_MAX = 0.80
GEMM_HALF_SIZE = 2.0**30  # M*N*K at which a GEMM reaches half of the plateau
FP8_EFF_RATIO = 0.80  # FP8 GEMM efficiency relative to the BF16 efficiency of the same shape
ATTENTION_EFF = 0.55
MEMORY_HEADROOM_BYTES = 3e9  # CUDA context, NCCL buffers, allocator fragmentation
MEMORY_USABLE_FRACTION = 0.95


@dataclass(frozen=True)
class Hardware:
    cluster: Cluster

    @property
    def gpus(self) -> int:
        return self.cluster.world_size

    @property
    def node_size(self) -> int:
        return self.cluster.gpus_per_node

    @property
    def usable_memory(self) -> float:
        return self.cluster.gpu.memory * MEMORY_USABLE_FRACTION - MEMORY_HEADROOM_BYTES

    def gemm_seconds(self, flops: float, size: float, fp8: bool) -> float:
        if flops <= 0:
            return 0.0
        eff = GEMM_EFF_MAX * size / (size + GEMM_HALF_SIZE)
        if fp8 and self.cluster.gpu.fp8_flops > 0:
            return flops / (self.cluster.gpu.fp8_flops * eff * FP8_EFF_RATIO)
        return flops / (self.cluster.gpu.bf16_flops * eff)

    def attention_seconds(self, flops: float) -> float:
        return flops / (self.cluster.gpu.bf16_flops * ATTENTION_EFF)

    def memory_seconds(self, nbytes: float) -> float:
        return nbytes / self.cluster.gpu.memory_bandwidth

    # ---- collectives ------------------------------------------------------------------------
    def link_bandwidth(self, group: int, stride: int) -> float:
        """Per-GPU bus bandwidth of a group of `group` ranks spaced `stride` apart in the
        rank order (tp innermost): inside one node it is NVLink, else one NIC per GPU."""
        if group <= 1:
            return float("inf")
        if group * stride <= self.node_size:
            return self.cluster.network.nvlink_allreduce_busbw
        net = self.cluster.network
        nics_per_gpu = max(1, net.nics_per_node // self.node_size) if net.nics_per_node else 0
        if nics_per_gpu == 0:
            raise ValueError("cluster.network.nics_per_node is 0: a multi-node group has no path between nodes")
        return net.nic_bandwidth * net.nic_efficiency * nics_per_gpu

    def all_reduce(self, nbytes: float, group: int, stride: int = 1) -> float:
        if group <= 1 or nbytes <= 0:
            return 0.0
        bw = self.link_bandwidth(group, stride)
        return 2 * (group - 1) / group * nbytes / bw + self.cluster.network.collective_latency_s

    def all_gather(self, nbytes: float, group: int, stride: int = 1) -> float:
        """`nbytes` is the gathered (full) size; reduce-scatter costs the same."""
        if group <= 1 or nbytes <= 0:
            return 0.0
        bw = self.link_bandwidth(group, stride)
        return (group - 1) / group * nbytes / bw + self.cluster.network.collective_latency_s

    reduce_scatter = all_gather

    def all_to_all(self, nbytes: float, group: int, stride: int = 1) -> float:
        """`nbytes` each rank sends in total. Across nodes NCCL all-to-all runs near one NIC's
        speed per GPU, whatever the NIC count (it does not aggregate NICs)."""
        if group <= 1 or nbytes <= 0:
            return 0.0
        if group * stride <= self.node_size:
            bw = self.cluster.gpu.nvlink_bandwidth * 0.8
        else:
            net = self.cluster.network
            bw = net.nic_bandwidth * net.nic_efficiency
        return (group - 1) / group * nbytes / bw + self.cluster.network.collective_latency_s

    def p2p(self, nbytes: float, across_nodes: bool) -> float:
        if nbytes <= 0:
            return 0.0
        net = self.cluster.network
        bw = net.nic_bandwidth * net.nic_efficiency if across_nodes else self.cluster.gpu.nvlink_bandwidth * 0.8
        return nbytes / bw + net.collective_latency_s
