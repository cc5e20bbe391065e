"""Data-parallel communication a pipeline rank leaves exposed, and the optimizer step's time
(vlac.compiler.cost_model: [rows, pipeline ranks] arrays).

Each rank hides its own data-parallel traffic behind its own compute (docs/fidelity.md, "Data-
parallel overlap"); which collectives overlap at all is the stack's (`grad_reduce_overlap`,
`param_gather_overlap`): without an overlap the collective is exposed whole.
"""

from __future__ import annotations

import numpy as np

from .hardware import Hardware

# NCCL kernels run on SMs (one per channel, 8-32 channels of 132 SMs): communication hidden
# behind compute still slows that compute down. Charged as this fraction of the hidden time.
OVERLAP_SLOWDOWN = 0.1
# Adam's step is memory bound: FP32 master, m and v read and written, the BF16 gradient read,
# the BF16 weight written, the norm (cost_model's docstring)
OPTIMIZER_BYTES_PER_PARAM = 30.0
BF16_BYTES = 2.0  # gradients reduced and weights gathered in BF16


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
    rs = hw.reduce_scatter(g_dense, d_dense, tp) + hw.reduce_scatter(g_expert, d_expert, ep * etp)
    ar = hw.all_reduce(g_dense, d_dense, tp) + hw.all_reduce(g_expert, d_expert, ep * etp)
    ag = rs  # ZeRO-1/2 gather back the updated (trainable) weights
    ag3 = (hw.reduce_scatter(dense / tp * b, d_dense, tp)  # ZeRO-3 gathers every weight, frozen too
           + hw.reduce_scatter(expert / (ep * etp) * b, d_expert, ep * etp))
    z = np.broadcast_to(zero, t_fwd.shape)
    r = np.broadcast_to(raf[:, None], t_fwd.shape)
    chunk = 1.0 / v
    none = np.zeros_like(t_fwd)
    # a stack that does not overlap a collective runs it after (or before) the compute
    exposed = lambda comm, window: comm  # noqa: E731
    hide_rs = hide if stack.grad_reduce_overlap else exposed
    hide_ag = hide if stack.param_gather_overlap else exposed
    # ZeRO-3 without resharding: the backward's re-gather and the reduce-scatter share its window
    both = hide(ag3 + rs, t_bwd) if hide_ag is hide_rs is hide else hide_ag(ag3, t_bwd) + hide_rs(rs, t_bwd)
    # ZeRO-2 reduce-scatters every micro-batch's gradients behind its backward, the last one
    # at the step's end as ZeRO-1 does (so with one micro-batch the two cost the same)
    earlier = (col["m"] - 1) / col["m"]
    per_mb = np.select([z == 2, (z == 3) & r, z == 3],
                       [earlier * hide_rs(rs, t_bwd), hide_ag(ag3, t_fwd) + both,
                        hide_ag(ag3, t_fwd) + hide_rs(rs, t_bwd)],
                       none)
    start = np.where((z == 1) | (z == 2), hide_ag(ag * chunk, t_fwd * chunk), none)
    end = np.select([z == 0, (z == 1) | (z == 2)], [hide_rs(ar * chunk, t_bwd * chunk), hide_rs(rs * chunk, t_bwd * chunk)],
                    none)
    return per_mb, start, end

def optimizer_seconds(hw: Hardware, dense, expert, col, d_dense, d_expert, zero):
    """`dense`, `expert`: per row, the trainable parameters of its largest pipeline rank."""
    tp, ep, etp = col["tp"][:, 0], col["ep"][:, 0], col["etp"][:, 0]
    d_dense, d_expert, zero = d_dense[:, 0], d_expert[:, 0], zero[:, 0]
    owned = dense / tp / np.where(zero >= 1, d_dense, 1.0) + \
        expert / (ep * etp) / np.where(zero >= 1, d_expert, 1.0)
    return hw.memory_seconds(owned * OPTIMIZER_BYTES_PER_PARAM)


def hide(comm, window):
    """Communication overlapped with `window` seconds of compute: the excess is exposed, and
    the hidden part still slows the compute by OVERLAP_SLOWDOWN of its duration."""
    hidden = np.minimum(comm, window)
    return comm - hidden + OVERLAP_SLOWDOWN * hidden
