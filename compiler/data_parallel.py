"""Data-parallel communication a pipeline rank leaves exposed, and the optimizer step's time
(vlac.compiler.cost_model: [rows, pipeline ranks] arrays).

Each rank hides its own data-parallel traffic behind its own compute (docs/fidelity.md, "Data-
parallel overlap"); which collectives overlap at all is the stack's (`grad_reduce_overlap`,
`param_gather_overlap`): without an overlap the collective is exposed whole.
"""

from __future__ import annotations

import numpy as np

from .hardware import Hardware

# Communication hidden behind compute still slows that compute: NCCL kernels run on SMs (one CTA
# per channel) and move their bytes through HBM. OVERLAP_SLOWDOWN is the share of the hidden time
# charged to a collective bound by the network (or overlapped by TransformerEngine / Megatron with
# few SMs: TP, EP, CP): its channels hold ~8-16 of the H100's 132 SMs and its HBM traffic is a
# NIC's rate, a few % of HBM. NVLINK_OVERLAP_SLOWDOWN is the share charged to the NVLink phase of a
# data-parallel NCCL ring: at the ~370 GB/s bus bandwidth of 8 x H100 (published-runs.md) each byte
# passes HBM about three times on each GPU (written into the receiver's FIFO by the peer, read
# back, written to the output or forwarded: NCCL's recvCopySend / recvReduceSend primitives),
# ~1.1 of the 3.35 TB/s, while its 16-32 channels (NCCL_MIN/MAX_NCHANNELS on NVLink) hold 12-24 %
# of the SMs: compute that overlaps it runs at about half speed, the starting value 0.5. The value
# set, 0.9, is the all-runs fit of `benchmarks/fidelity_loo.py` (grid 0.3-0.9): the llm-foundry
# FSDP rows with the most overlapped NVLink traffic per micro-batch (13B at 2K, 2 sequences: +28 %
# at 0.1, +15 % at 0.5, +5 % at 0.9) say an eager FSDP step gains almost nothing from it.
OVERLAP_SLOWDOWN = 0.1
NVLINK_OVERLAP_SLOWDOWN = 0.9
# Adam's step is memory bound: FP32 master, m and v read and written, the BF16 gradient read,
# the BF16 weight written, the norm (cost_model's docstring)
OPTIMIZER_BYTES_PER_PARAM = 30.0
BF16_BYTES = 2.0  # gradients reduced and weights gathered in BF16
# rows x ranks up to which a pass costs its collectives in one batch (_collectives): the search's
# fast path passes a few hundred rows, where numpy's per-call overhead is the cost; a planner
# pass of up to cost_arrays.CELLS is faster one collective at a time (measured on the README's
# flagship: its 106k-row evaluate ~5 % slower batched)
BATCH_CELLS = 1 << 13


def exposed_data_parallel(hw: Hardware, stack, dense, expert, trained, col, d_dense, d_expert, zero, raf, v, t_fwd,
                          t_bwd):
    """Exposed data-parallel seconds per rank ([rows, pp] each): per micro-batch (ZeRO-2
    reduce-scatters, ZeRO-3 gathers and reduce-scatters, hidden behind that micro-batch's own
    forward/backward on the rank), at the step's start (ZeRO-1/2 parameter all-gather behind
    the first forward) and at its end (the gradient all-reduce / reduce-scatter behind the
    last backward). Interleaved ranks reduce each chunk's gradients after the chunk's last
    backward: the exposed tail is chunk 0's 1/v of the traffic behind 1/v of the backward.
    Each rank's window is its own compute, so more compute on one rank (recompute) never
    hides more than it adds: the step is monotone in every rank's work. Frozen parameters
    (`trained` excludes them) have no gradient to reduce and, under ZeRO-1/2, no update to
    gather back; ZeRO-3 still gathers them for every forward and backward."""
    tp, ep, etp = col["tp"], col["ep"], col["etp"]
    b = BF16_BYTES  # BF16, as the weights gathered are
    g_dense, g_expert = trained[0] / tp * b, trained[1] / (ep * etp) * b  # [rows, ranks]
    # each collective as (seconds, slowdown of the compute hiding it): the dense and expert groups
    # differ in how much of their ring runs on NVLink. ZeRO-1/2 gather back the updated
    # (trainable) weights as the reduce-scatter moves them; ZeRO-3 gathers every weight, frozen too
    rs, ar, ag3 = _collectives(hw, (1, 2, 1), (g_dense, g_dense, dense / tp * b),
                               (g_expert, g_expert, expert / (ep * etp) * b), (d_dense, d_expert), (tp, ep * etp))
    ag = rs
    z = np.broadcast_to(zero, t_fwd.shape)
    r = np.broadcast_to(raf[:, None], t_fwd.shape)
    chunk = 1.0 / v
    none = np.zeros_like(t_fwd)

    # a stack that does not overlap a collective runs it after (or before) the compute
    def exposed(comm, window):
        return comm[0]

    def hidden(comm, window):
        return hide(comm[0], window, comm[1])

    hide_rs = hidden if stack.grad_reduce_overlap else exposed
    hide_ag = hidden if stack.param_gather_overlap else exposed
    part = lambda comm, share: (comm[0] * share, comm[1])  # noqa: E731
    # each exposed figure once, though several ZeRO levels read it (a pass's arrays are small:
    # the numpy calls are the cost); the first level that matches picks, as np.select would
    rs_bwd, ag3_fwd, bwd_chunk = hide_rs(rs, t_bwd), hide_ag(ag3, t_fwd), t_bwd * chunk
    zero1_2, zero2, zero3 = (z == 1) | (z == 2), z == 2, z == 3
    # ZeRO-3 without resharding: the backward's re-gather and the reduce-scatter share its window
    both = hidden(_joined(ag3, rs), t_bwd) if hide_ag is hide_rs is hidden else hide_ag(ag3, t_bwd) + rs_bwd
    # ZeRO-2 reduce-scatters every micro-batch's gradients behind its backward, the last one
    # at the step's end as ZeRO-1 does (so with one micro-batch the two cost the same)
    earlier = (col["m"] - 1) / col["m"]
    per_mb = np.where(zero2, earlier * rs_bwd,
                      np.where(zero3 & r, ag3_fwd + both, np.where(zero3, ag3_fwd + rs_bwd, none)))
    start = np.where(zero1_2, hide_ag(part(ag, chunk), t_fwd * chunk), none)
    end = np.where(z == 0, hide_rs(part(ar, chunk), bwd_chunk),
                   np.where(zero1_2, hide_rs(part(rs, chunk), bwd_chunk), none))
    return per_mb, start, end


def _collectives(hw: Hardware, passes, dense_bytes, expert_bytes, group, stride):
    """Data-parallel ring collectives, each over the dense and the expert group one after the
    other (_joined): `passes` per op (1 all-gather / reduce-scatter, 2 all-reduce), its dense
    and expert bytes ([rows, ranks]); `group`, `stride`: the dense and the expert group's
    ([rows, 1] each). Costed in one batch, [ops, groups, rows, ranks]: the arrays are small (a
    pass's rows x ranks), so the numpy calls, not the elements, are the cost; each element's
    arithmetic is the same as one collective at a time."""
    shape = np.broadcast_shapes(*(a.shape for a in dense_bytes + expert_bytes))
    if np.prod(shape) > BATCH_CELLS:  # a large pass: one collective at a time reads fewer broadcast arrays
        return [_joined(_costed(hw, p, d, group[0], stride[0]), _costed(hw, p, e, group[1], stride[1]))
                for p, d, e in zip(passes, dense_bytes, expert_bytes)]
    nbytes = np.empty((len(passes), 2) + shape)
    for i, pair in enumerate(zip(dense_bytes, expert_bytes)):
        nbytes[i, 0], nbytes[i, 1] = pair
    t, slowdown = _costed(hw, np.array(passes, dtype=float).reshape(-1, 1, 1, 1), nbytes, np.stack(group)[None],
                          np.stack(stride)[None])
    total, rate = _joined((t[:, 0], slowdown[:, 0]), (t[:, 1], slowdown[:, 1]))
    return [(total[i], rate[i]) for i in range(len(passes))]


def _costed(hw: Hardware, passes, nbytes, group, stride):
    """A data-parallel ring collective as (seconds, slowdown of the compute that hides it):
    NVLINK_OVERLAP_SLOWDOWN over its NVLink phase, OVERLAP_SLOWDOWN over the rest (its network
    phase and latency; module comment). `passes`: 1 for all-gather / reduce-scatter, 2 for
    all-reduce (hardware's _ring_seconds)."""
    t = hw._ring_seconds(nbytes, group, stride, passes)
    nvl = hw.nvlink_seconds(nbytes, group, stride, passes)
    share = np.where(t > 0, nvl / np.where(t > 0, t, 1.0), 0.0)
    return t, OVERLAP_SLOWDOWN + (NVLINK_OVERLAP_SLOWDOWN - OVERLAP_SLOWDOWN) * share


def _joined(*comms):
    """Collectives run one after another as one (seconds, slowdown): the slowdown weighted by time."""
    total = sum(t for t, _ in comms)
    weighted = sum(t * rate for t, rate in comms)
    return total, np.where(total > 0, weighted / np.where(total > 0, total, 1.0), OVERLAP_SLOWDOWN)


def optimizer_seconds(hw: Hardware, dense, expert, col, d_dense, d_expert, zero):
    """`dense`, `expert`: per row, the trainable parameters of its largest pipeline rank."""
    tp, ep, etp = col["tp"][:, 0], col["ep"][:, 0], col["etp"][:, 0]
    d_dense, d_expert, zero = d_dense[:, 0], d_expert[:, 0], zero[:, 0]
    owned = dense / tp / np.where(zero >= 1, d_dense, 1.0) + \
        expert / (ep * etp) / np.where(zero >= 1, d_expert, 1.0)
    return hw.memory_seconds(owned * OPTIMIZER_BYTES_PER_PARAM)


def hide(comm, window, slowdown=None):
    """Communication overlapped with `window` seconds of compute: the excess is exposed, and
    the hidden part still slows the compute by `slowdown` (default OVERLAP_SLOWDOWN) of its
    duration."""
    hidden = np.minimum(comm, window)
    return comm - hidden + (OVERLAP_SLOWDOWN if slowdown is None else slowdown) * hidden
