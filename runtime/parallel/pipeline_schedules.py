"""The plan's pipeline schedule as a torch.distributed.pipelining schedule.

    plan.schedule      stages per rank   torch schedule
    gpipe              1                 ScheduleGPipe
    1f1b               1                 Schedule1F1B
    interleaved_1f1b   v >= 2 (looped)   ScheduleInterleaved1F1B
    zero_bubble        1                 ScheduleInterleavedZeroBubble

zero_bubble is ZB-H1 (Qi et al. 2023): the 1F1B order with every backward split into B, the
input gradient that the previous stage waits for, and W, the weight gradient that nobody waits
for; W passes are deferred into the slots where 1F1B would idle. torch's
ScheduleInterleavedZeroBubble builds that order for any number of local stages; with one stage
per rank its warm-up is pp - rank - 1 forwards, as in 1F1B. (torch's other zero-bubble schedule,
ScheduleZBVZeroBubble, needs exactly two stages per rank in a V placement, which plan.stage_split
does not describe.) The B pass runs `torch.autograd.grad` with respect to the stage inputs only,
keeping the graph; the W pass differentiates the saved intermediate nodes with respect to the
parameters. The first stage has no input gradient: its B is empty and its W runs the whole backward.

ScheduleInterleavedZeroBubble groups micro-batches into rounds of m // pp (at least one) and needs
m to be a multiple of the number of rounds (e.g. pp 2: m = 2, 3, 4, 6, 8 run; m = 5 or 7 do not).
With sharded data parallelism it needs zero <= 2: under zero 3 FSDP2 reshards the parameters when
the B pass ends, and the W pass then differentiates with respect to parameters no longer gathered
(measured: wrong gradients, not an error), so it is refused.
"""

from __future__ import annotations

from typing import Callable

from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B,
                                          ScheduleInterleavedZeroBubble)

SINGLE_STAGE = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


def zero_bubble_rounds(m: int, pp: int) -> int:
    """Rounds of micro-batches of ScheduleInterleavedZeroBubble; m must be a multiple of it."""
    return max(1, m // pp)


def check_schedule(schedule: str, pp: int, virtual_stages: int, m: int, dp: int = 1, zero: int = 0) -> None:
    """Fail before building stages when torch's schedule cannot run this plan; the message names
    the plan field and a value that works."""
    if m < pp:
        raise ValueError(f"plan.num_microbatches = {m} with plan.pp = {pp}: every pipeline schedule here needs at "
                         f"least pp micro-batches; re-plan with a smaller micro-batch size (--pin microbatch_size=...)")
    if schedule == "zero_bubble":
        if virtual_stages != 1:
            raise ValueError(f"plan.schedule = 'zero_bubble' runs one stage per rank (ZB-H1), but "
                             f"plan.virtual_stages = {virtual_stages}; re-plan with --pin virtual_stages=1")
        if dp > 1 and zero >= 3:
            raise ValueError(f"plan.schedule = 'zero_bubble' with plan.zero = {zero} and dp = {dp}: FSDP2 reshards "
                             f"parameters after the input-gradient pass, before the deferred weight-gradient pass "
                             f"needs them gathered; re-plan with --pin zero=2 (parameters stay gathered until "
                             f"backward) or --pin schedule=1f1b")
        rounds = zero_bubble_rounds(m, pp)
        if m % rounds:
            fits = [k for k in range(pp, 2 * m + 1) if k % zero_bubble_rounds(k, pp) == 0 and k != m]
            near = min(fits, key=lambda k: (abs(k - m), k))
            raise ValueError(f"plan.num_microbatches = {m} with plan.schedule = 'zero_bubble' and pp = {pp}: torch's "
                             f"zero-bubble schedule groups micro-batches in {rounds} rounds of m // pp and needs m to "
                             f"be a multiple of {rounds}; re-plan so that m is e.g. {near} (--pin microbatch_size=...), "
                             f"or --pin schedule=1f1b")
    elif schedule == "interleaved_1f1b":
        if virtual_stages < 2:
            raise ValueError(f"plan.schedule = 'interleaved_1f1b' needs plan.virtual_stages >= 2, got "
                             f"{virtual_stages}; re-plan with --pin virtual_stages=2 or --pin schedule=1f1b")
    elif schedule not in SINGLE_STAGE:
        raise ValueError(f"plan.schedule = {schedule!r} is not a pipeline schedule of this runtime; choose one of "
                         f"gpipe, 1f1b, interleaved_1f1b, zero_bubble")
    elif virtual_stages != 1:
        raise ValueError(f"plan.schedule = {schedule!r} runs one stage per rank, but plan.virtual_stages = "
                         f"{virtual_stages}; re-plan with --pin schedule=interleaved_1f1b")


def make_schedule(schedule: str, stages: list[PipelineStage], pp: int, m: int, loss_fn: Callable,
                  dp: int = 1, zero: int = 0):
    """The torch schedule of this rank's stages. Gradients are not rescaled by the schedule: the
    loss is already normalised over the global batch (runner.py)."""
    check_schedule(schedule, pp, len(stages), m, dp, zero)
    if schedule == "interleaved_1f1b":
        return ScheduleInterleaved1F1B(stages, n_microbatches=m, loss_fn=loss_fn, scale_grads=False)
    if schedule == "zero_bubble":
        return ScheduleInterleavedZeroBubble(stages, n_microbatches=m, loss_fn=loss_fn, scale_grads=False)
    return SINGLE_STAGE[schedule](stages[0], n_microbatches=m, loss_fn=loss_fn, scale_grads=False)
