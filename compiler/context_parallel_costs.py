"""What context parallelism costs a decoder block's attention, per scheme (`stack.context_parallel`).

Each cp rank holds 1/cp of a sequence's tokens (two load-balanced chunks, runtime/parallel/
context_parallel.py); queries, MLPs and norms see only those. Attention needs every key and value
before the query, and the two schemes get them differently:

- `p2p` (TransformerEngine's `cp_comm_type: p2p`, AttnFuncWithCPAndKVP2P: NeMo / Megatron-Core's
  default; torch's ring attention likewise): cp steps around a ring. Step i computes the local
  queries against the K/V chunk received at step i - 1 while the chunk for step i + 1 is in flight
  (so the exchange hides behind attention; the first step uses the rank's own K/V), forward cp - 1
  K/V exchanges, backward cp - 1 K/V and cp - 1 K/V-gradient exchanges. What it adds on the
  compute stream: each step's partial output is merged into the running output by its log-sum-exp
  (`flash_attn_fwd_out_correction`: out += out_step * exp(lse_step - lse); one read of the step's
  output, a read and a write of the running one, in q's dtype), after a zeroed running output; in
  backward each step's dQ and dK/dV partials are added into their accumulators the same way. On
  the causal, load-balanced layout the rank whose every step after the first covers its whole
  query block sets the pace (the step sees half of the K/V chunks: the K/V side is half as large).
- `all_gather` (Llama 3, Dubey et al. 2024, Sec. 3.3.2; vlac's runtime): K and V are all-gathered
  over the cp group before the attention, which then runs as one kernel over every key; their
  gradients are reduce-scattered in backward. No merge traffic, but the collective is exposed:
  the attention cannot start until it completes (the report accepts that latency because GQA keeps
  K/V small). vlac's runtime gathers with a blocking all-gather likewise.

The attention FLOPs are the same for both (causal pairs counted once, split evenly by the layout).
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("p2p", "all_gather")

# Of a cp exchange's total (forward and backward) time, the forward share: p2p sends K/V cp - 1
# times forward and K/V plus their gradients cp - 1 times each backward (1 of 3); all_gather
# gathers once forward and reduce-scatters once backward (1 of 2). Full recompute reruns it.
FORWARD_SHARE = {"p2p": 1.0 / 3.0, "all_gather": 1.0 / 2.0}


def exchange_seconds(hw, scheme: str, kv_bytes, tp, cp) -> np.ndarray:
    """Seconds of one block's cp communication per micro-batch (forward and backward) for
    `kv_bytes`, the K/V one cp rank holds."""
    if scheme == "all_gather":
        return np.where(cp > 1, 2 * hw.all_gather(kv_bytes * cp, cp, tp), 0.0)
    across = tp * cp > hw.node_size
    return np.where(cp > 1, 3 * (cp - 1) * hw.p2p(kv_bytes, across), 0.0)


def merge_bytes(scheme: str, q_elems, kv_elems, act_bytes: float, cp) -> tuple[np.ndarray, np.ndarray]:
    """(forward, backward) HBM bytes of a p2p ring's per-step merges for one block per micro-batch:
    `q_elems` / `kv_elems` the query (= output) and K+V elements one cp rank holds (per TP rank).
    Per step a merge reads the step's partial (a bytes per element) and reads and writes the
    accumulator (2a); the accumulator is zeroed first (a). Backward: dQ on every step, dK/dV whole
    on the first step and half on the cp - 1 others. Zero for all_gather and for cp = 1."""
    cp = np.asarray(cp, dtype=float)
    if scheme != "p2p":
        zero = np.zeros(np.broadcast(q_elems, cp).shape)
        return zero, zero
    per_pass = 3.0 * act_bytes
    ring = cp > 1
    fwd = np.where(ring, (cp * per_pass + act_bytes) * q_elems, 0.0)
    kv_steps = 1.0 + (cp - 1) / 2.0
    bwd = np.where(ring, (cp * per_pass + act_bytes) * q_elems + (kv_steps * per_pass + act_bytes) * kv_elems, 0.0)
    return fwd, bwd
