"""The cluster as the cost model sees it: achievable rates of kernels and collectives.

Every function takes numpy arrays (or scalars) so the planner can cost thousands of layouts in
one call. The calibration choices below are global: one set of figures for every model and
cluster, checked against published runs by `benchmarks/fidelity.py` (never fitted per case).

Compute
- GEMMs follow a roofline: time = max(FLOPs / (peak * GEMM_EFF), operand bytes / (HBM * HBM_EFF))
  plus a fixed KERNEL_OVERHEAD_S per launch (tail effect and launch gap). GEMM_EFF is the
  sustained rate of a large GEMM inside a training step: cuBLAS reaches ~750 TFLOP/s BF16 and
  ~1,300-1,450 FP8 on an isolated 8192^3 GEMM, but a 700 W H100 running a whole training step
  holds lower clocks, and FP8 GEMMs lose a further share to scaling and FP32 promotion. The two
  values (0.60 of 989 = 593 TFLOP/s BF16, 0.55 of 1979 = 1,088 TFLOP/s FP8) are the all-runs fit
  of `benchmarks/fidelity_loo.py` over the 29 cited runs of three stacks (grids and sources
  there), not fitted per run.
- The roofline makes narrow GEMMs (small per-expert token counts, small widths) memory bound by
  themselves: that is the "efficiency by size" fall-off, derived rather than fitted.
- Fused attention runs at the rate of the stack's kernel (FlashAttention-2/3, cuDNN; spec.stack,
  compiler/stack_costs.ATTENTION_EFF with its sources), applied to the FLOPs the graph counts.
- Element-wise and normalisation kernels are memory bound: bytes / (HBM * HBM_EFF); streaming
  kernels reach ~85-90 % of HBM bandwidth (STREAM-like copy on H100: ~2.9-3.0 of 3.35 TB/s).

Communication (NCCL; time = latency + bytes / bus bandwidth, the alpha-beta model, which gives
the measured ramp of bus bandwidth with message size: at 1 MB the 20 us latency dominates,
at 256 MB the link rate does)
- Inside a node: the preset's measured NCCL all-reduce bus bandwidth (~370 GB/s on 8 x H100,
  ring; published-runs.md "Interconnect measurements"); all-gather and reduce-scatter reach
  about the same bus bandwidth; all-to-all and point-to-point ~80 % of the NVLink rate.
- Between nodes: the spec's `network.fabric` (InfiniBand NDR/HDR, RoCE 400/200; spec/system.FABRICS
  with their datasheets) gives each NIC's line rate, `nics_per_node` how many GPUs share one: a
  DGX/HGX H100 node has 8 NDR NICs, one per GPU, at ~95 % of line rate (46-49 GB/s measured);
  with 4 per node each GPU's inter-node traffic gets half a NIC. A group with several members per node splits the inter-node phase
  over their NICs (NCCL's hierarchical/ring algorithms do), but all-to-all does not aggregate
  NICs: expert-parallel traffic runs at single-NIC speed per GPU (DESIGN.md).
- Latency: `network.collective_latency_s` inside a node; across nodes it grows with the tree
  depth, latency * (1 + log2(nodes)) (NCCL switches to tree algorithms at scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlac.spec.system import Cluster

GEMM_EFF_BF16 = 0.60  # of the dense BF16 peak, large GEMMs, sustained in a training step
GEMM_EFF_FP8 = 0.55  # of the dense FP8 peak, large GEMMs (delayed or current per-tensor scaling)
HBM_EFF = 0.85  # streaming kernels and GEMM operand traffic
KERNEL_OVERHEAD_S = 3e-6  # per GEMM launch: tail wave and launch gap
A2A_NVLINK_FRACTION = 0.8  # all-to-all / p2p inside a node, of the per-direction NVLink rate

# Memory: what a process cannot give to the model. The CUDA context and cuBLAS/cuDNN workspaces
# take ~1 GB, NCCL's channel buffers ~1-2 GB on 8-NIC nodes; the caching allocator loses ~5 % to
# fragmentation on long runs (PyTorch memory-snapshot experience, Megatron's recommendation to
# keep ~5 % free). Usable = memory * (1 - fragmentation) - fixed reserve.
MEMORY_FRAGMENTATION = 0.05
MEMORY_RESERVED_BYTES = 3e9


@dataclass(frozen=True)
class Hardware:
    cluster: Cluster

    # ---- sizes ----------------------------------------------------------------------------
    @property
    def gpus(self) -> int:
        return self.cluster.world_size

    @property
    def node_size(self) -> int:
        return self.cluster.gpus_per_node

    @property
    def usable_memory(self) -> float:
        return self.cluster.gpu.memory * (1 - MEMORY_FRAGMENTATION) - MEMORY_RESERVED_BYTES

    @property
    def has_fp8(self) -> bool:
        return self.cluster.gpu.fp8_flops > 0

    # ---- compute ----------------------------------------------------------------------------
    def gemm_seconds(self, flops, m, n, k, fp8, groups=1, bytes_per_elem=2.0):
        """Roofline time of `groups` GEMMs of shape (m, n, k) doing `flops` FLOPs in total
        (`flops` may exceed 2mnk*groups when several launches share a shape)."""
        gpu = self.cluster.gpu
        fp8 = np.asarray(fp8, dtype=bool) & self.has_fp8
        rate = np.where(fp8, gpu.fp8_flops * GEMM_EFF_FP8, gpu.bf16_flops * GEMM_EFF_BF16)
        elem = np.where(fp8, 1.0, bytes_per_elem)
        # operands are read once and the output written once (in the output dtype, BF16)
        traffic = groups * (elem * (m * k + k * n) + 2.0 * m * n)
        t = np.maximum(flops / rate, traffic / (gpu.memory_bandwidth * HBM_EFF)) + KERNEL_OVERHEAD_S
        return np.where(np.asarray(flops) > 0, t, 0.0)

    def attention_seconds(self, flops, efficiency):
        """Fused attention doing `flops` at `efficiency` of the BF16 peak (the stack's kernel)."""
        return np.asarray(flops) / (self.cluster.gpu.bf16_flops * efficiency)

    def memory_seconds(self, nbytes):
        return np.asarray(nbytes) / (self.cluster.gpu.memory_bandwidth * HBM_EFF)

    # ---- communication ----------------------------------------------------------------------
    def _latency(self, group, stride):
        lat = self.cluster.network.collective_latency_s
        nodes = np.maximum(1.0, np.asarray(group) * stride / self.node_size)
        return np.where(nodes > 1, lat * (1 + np.log2(nodes)), lat)

    def _members_per_node(self, group, stride):
        return np.clip(self.node_size // np.maximum(1, stride), 1, group)

    def _nic(self) -> float:
        net = self.cluster.network
        nics_per_gpu = net.nics_per_node / self.node_size
        if nics_per_gpu <= 0:
            raise ValueError("cluster.network.nics_per_node: 0 NICs, so a multi-node group has no path between "
                             "nodes; set nics_per_node >= 1 or use a single node")
        return net.nic_bandwidth * net.nic_efficiency * min(1.0, nics_per_gpu)

    def _ring_seconds(self, nbytes, group, stride, passes):
        """`passes` = 1 for all-gather / reduce-scatter (`nbytes` = the full, gathered size),
        2 for all-reduce. Inside a node: NVLink bus bandwidth; across nodes: an intra-node
        phase on NVLink and an inter-node phase over the NICs of the members in each node."""
        group = np.asarray(group, dtype=float)
        stride = np.asarray(stride, dtype=float)
        nbytes = np.asarray(nbytes, dtype=float)
        nvl = self.cluster.network.nvlink_allreduce_busbw
        inside = group * stride <= self.node_size
        per_node = self._members_per_node(group, stride)
        nodes = np.maximum(1.0, group / per_node)
        intra = passes * (per_node - 1) / per_node * nbytes / nvl
        inter = passes * (nodes - 1) / nodes * nbytes / per_node / self._nic() if self.gpus > self.node_size else 0.0
        t_in = passes * (group - 1) / np.maximum(group, 1) * nbytes / nvl
        t = np.where(inside, t_in, intra + inter) + self._latency(group, stride)
        return np.where((group > 1) & (nbytes > 0), t, 0.0)

    def nvlink_seconds(self, nbytes, group, stride=1, passes=1):
        """The NVLink phase of `_ring_seconds` (same arguments): the whole transfer for a group
        inside a node, the intra-node phase for one across nodes, 0 with one member per node;
        the rest of the collective's time is its network phase and latency."""
        group = np.asarray(group, dtype=float)
        stride = np.asarray(stride, dtype=float)
        nbytes = np.asarray(nbytes, dtype=float)
        nvl = self.cluster.network.nvlink_allreduce_busbw
        inside = group * stride <= self.node_size
        per_node = np.where(inside, group, self._members_per_node(group, stride))
        t = passes * (per_node - 1) / np.maximum(per_node, 1) * nbytes / nvl
        return np.where((group > 1) & (nbytes > 0), t, 0.0)

    def all_reduce(self, nbytes, group, stride=1):
        return self._ring_seconds(nbytes, group, stride, 2)

    def all_gather(self, nbytes, group, stride=1):
        """`nbytes` is the gathered (full) size; reduce-scatter costs the same."""
        return self._ring_seconds(nbytes, group, stride, 1)

    reduce_scatter = all_gather

    def all_to_all(self, nbytes, group, stride=1):
        """`nbytes` each rank sends in total (its own share included). Peers in the node are
        reached over NVLink, the others through this GPU's single NIC, concurrently."""
        group = np.asarray(group, dtype=float)
        nbytes = np.asarray(nbytes, dtype=float)
        per_node = self._members_per_node(group, stride)
        a2a_nvl = self.cluster.gpu.nvlink_bandwidth * A2A_NVLINK_FRACTION
        on = (per_node - 1) / np.maximum(group, 1) * nbytes / a2a_nvl
        off = (group - per_node) / np.maximum(group, 1) * nbytes
        off_t = off / self._nic() if self.gpus > self.node_size else 0.0
        t = np.maximum(on, off_t) + self._latency(group, stride)
        return np.where((group > 1) & (nbytes > 0), t, 0.0)

    def p2p(self, nbytes, across_nodes):
        net = self.cluster.network
        nbytes = np.asarray(nbytes, dtype=float)
        bw_in = self.cluster.gpu.nvlink_bandwidth * A2A_NVLINK_FRACTION
        bw_out = self._nic() if self.gpus > self.node_size else bw_in
        t = nbytes / np.where(across_nodes, bw_out, bw_in) + net.collective_latency_s
        return np.where(nbytes > 0, t, 0.0)
