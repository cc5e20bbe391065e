"""Each pipeline rank's recompute choice, partial full recompute included (vlac.compiler.cost_model).

A rank's memory and recompute time are known per policy (none, selective, full over every block
the rank holds) as [rows, ranks, 3] arrays. A stack with `partial_recompute` (Megatron-Core's
`--recompute-granularity full --recompute-method block --recompute-num-layers k`) may also run
full recompute on only k of the rank's blocks: those keep only their input and run their forward
again in backward, the others keep what they keep without recompute. Per recomputed block that
saves the rank's mean per-block difference between none and full (times the micro-batches in
flight) and costs the rank's mean per-block rerun time: exact when the rank's blocks are alike
(every decoder of a uniform stack), the mean of its block kinds otherwise.

Each rank takes, among the allowed choices that fit, the one with the least recompute time: no
recompute, selective, or full on the smallest k that fits (k = all of its blocks without
`partial_recompute`). With none fitting it takes the last allowed policy on every block; where
`full` is chosen without needing any block (only `full` allowed, and memory to spare), it covers
every block, as `full` does without `partial_recompute`.

Which k blocks (`full_recompute_layers`, what the emitted program checkpoints): the figures above
price any k of a rank's blocks alike (the rank's mean per-block saving and rerun, one in-flight
count for all of its virtual chunks), so the rule need only be fixed and shared by the plan, the
emitted train.py and the runtime. It is Megatron-Core's: `recompute_num_layers` per virtual
chunk, each chunk its first layers (`recompute_method: block`); k spread over the rank's chunks
as evenly as their sizes allow, the earlier chunks (more micro-batches in flight under the
interleaved schedule) taking the remainder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FULL = 2  # index of `full` in graph.RECOMPUTE


@dataclass
class RankChoice:
    """[rows, ranks] arrays: the policy index, the blocks recomputed in full (0 unless `full`),
    the rank's memory and recompute seconds per micro-batch under that choice, and whether it
    fits."""

    policy: np.ndarray
    layers: np.ndarray
    total: np.ndarray
    recompute: np.ndarray
    fits: np.ndarray


def partial_full(total: np.ndarray, rc: np.ndarray, blocks: np.ndarray, k: np.ndarray):
    """Memory and recompute time of full recompute on `k` of a rank's `blocks` ([rows, ranks]
    each): linear between no recompute (k = 0) and full on every block (k = blocks), and exactly
    the full figures at k = blocks."""
    share, whole = _share(total, blocks, k)
    return _partial_memory(total, share, whole), np.where(whole, rc[..., FULL], share * rc[..., FULL])


def _share(total: np.ndarray, blocks: np.ndarray, k: np.ndarray):
    """The share of a rank's blocks that `k` is, and where it is all of them."""
    return np.divide(k, blocks, out=np.zeros_like(total[..., 0]), where=blocks > 0), k >= blocks


def _partial_memory(total: np.ndarray, share: np.ndarray, whole: np.ndarray) -> np.ndarray:
    return np.where(whole, total[..., FULL], total[..., 0] - share * (total[..., 0] - total[..., FULL]))


def smallest_fitting(total: np.ndarray, blocks: np.ndarray, usable: float) -> np.ndarray:
    """The fewest blocks of each rank to recompute in full for its memory to fit `usable` (0 when
    it fits without; `blocks`, all of them, when only full recompute of every block might)."""
    saving = np.divide(total[..., 0] - total[..., FULL], blocks, out=np.zeros_like(blocks), where=blocks > 0)
    excess = total[..., 0] - usable
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(excess <= 0, 0.0, np.where(saving > 0, np.ceil(excess / saving), blocks))
    k = np.minimum(k, blocks)
    # the division rounds: step up one block where the linear figure still misses by a few bytes
    mem = _partial_memory(total, *_share(total, blocks, k))
    return np.where((mem > usable) & (k < blocks), k + 1, k)


def choose(total: np.ndarray, rc: np.ndarray, blocks: np.ndarray, usable: float, allowed: np.ndarray,
           partial: bool) -> RankChoice:
    """The search's choice per rank (module docstring). `total`, `rc`: [rows, ranks, 3];
    `blocks`: [rows, ranks] block layers per rank; `allowed`: [3] bool."""
    k = smallest_fitting(total, blocks, usable) if partial else blocks
    k = np.where(k > 0, k, blocks)  # `full` on none of the blocks would be no recompute: all of them
    full_mem, full_rc = partial_full(total, rc, blocks, k)
    mem = np.stack([total[..., 0], total[..., 1], full_mem], axis=-1)
    secs = np.stack([rc[..., 0], rc[..., 1], full_rc], axis=-1)
    fits = (mem <= usable) & allowed[None, None, :]
    ok = fits.any(axis=2)
    policy = np.where(fits, secs, np.inf).argmin(axis=2)  # ties toward less recompute: none, selective, full
    policy = np.where(ok, policy, int(np.nonzero(allowed)[0].max()))
    # where nothing fits, k is every block (smallest_fitting), so `full` is priced on all of them
    # one flat gather per figure (mem and secs are contiguous [rows, ranks, 3]): take_along_axis's
    # wrapper costs more than the gather on a search pass's few hundred rows
    flat = policy.reshape(-1) + np.arange(0, 3 * policy.size, 3)
    take = lambda a: a.reshape(-1)[flat].reshape(policy.shape)  # noqa: E731
    return RankChoice(policy, np.where(policy == FULL, k, 0.0), take(mem), take(secs), ok)


def forced(total: np.ndarray, rc: np.ndarray, blocks: np.ndarray, usable: float, policy: np.ndarray,
           layers: np.ndarray | None) -> RankChoice:
    """A given choice per rank: `policy` [rows, ranks] indices and, for `full`, `layers` blocks
    recomputed (None, or a negative entry: every block of the rank)."""
    k = blocks if layers is None else np.where(layers < 0, blocks, np.minimum(layers, blocks))
    full_mem, full_rc = partial_full(total, rc, blocks, k)
    pick = lambda a, full: np.where(policy == FULL, full, np.take_along_axis(a, policy[..., None], 2)[..., 0])  # noqa: E731
    mem, secs = pick(total, full_mem), pick(rc, full_rc)
    return RankChoice(policy, np.where(policy == FULL, k, 0.0), mem, secs, mem <= usable)


def full_recompute_layers(chunks: list[list[int]], k: int) -> list[int]:
    """The decoder layers a pipeline rank recomputes in full when the plan says k of its blocks
    (module docstring): `chunks` are the decoder layer ids of the rank's virtual stages in
    schedule order (stage r, r + pp, ...); round-robin over the chunks, each chunk's first layers."""
    taken, left = [0] * len(chunks), min(k, sum(len(c) for c in chunks))
    while left:
        for j, chunk in enumerate(chunks):
            if left and taken[j] < len(chunk):
                taken[j] += 1
                left -= 1
    return sorted(i for chunk, t in zip(chunks, taken) for i in chunk[:t])


def rank_chunks(p: dict) -> list[list[list[int]]]:
    """Per pipeline rank of plan.json's `plan` section, the decoder layer ids of its stages in
    schedule order (stage_split also lists -1, the inputs, and L, the head)."""
    split = p["stage_split"]
    head = max(i for chunk in split for i in chunk)
    chunks = [[i for i in chunk if 0 <= i < head] for chunk in split]
    return [chunks[rank::p["pp"]] for rank in range(p["pp"])]


def planned_full_layers(p: dict) -> list[list[int] | None]:
    """Per pipeline rank of plan.json's `plan` section, the decoder layers recomputed in full:
    a list where `recompute_layers_per_stage` gives a `full` rank fewer than all of its blocks,
    None where the rank's policy covers every block (or none)."""
    pp, counts = p["pp"], p.get("recompute_layers_per_stage") or []
    policies = p.get("recompute_per_stage") or [p["recompute"]] * pp
    if not counts:
        return [None] * pp
    out: list[list[int] | None] = []
    for policy, k, mine in zip(policies, counts, rank_chunks(p)):
        out.append(full_recompute_layers(mine, int(k)) if policy == "full" and k < sum(map(len, mine)) else None)
    return out
