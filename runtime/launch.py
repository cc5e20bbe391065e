"""The submitit side of a program: one callable per job that every task runs.

`TrainJob` is Checkpointable. On preemption or time-out Slurm (or the local executor) sends the
tasks submitit's signal (USR2). Instead of letting submitit requeue at once, in the middle of a
step and of its collectives, the job turns the signal into a request: the training loop finishes
the step, all ranks agree to stop, write a checkpoint, and only then submitit's own handler runs
on rank 0 (TrainJob.checkpoint resubmits the same callable, `scontrol requeue` or the local
controller restarts the job), which resumes from that checkpoint.
"""

from __future__ import annotations

import os
import random
import runpy
import signal
import sys
from pathlib import Path
from typing import Any

import submitit

# The rendezvous port of a multi-process job, a function of the job id (the same on every task).
# submitit draws it from 20000-60000, which overlaps Linux's ephemeral ports (32768-60999 by
# default, /proc/sys/net/ipv4/ip_local_port_range): a connection of gloo or of an earlier job may
# hold it, and rank 0 then fails to listen (EADDRINUSE) while the others wait. Below that range.
RENDEZVOUS_PORTS = (20000, 32767)
SIGNAL_LEAD_S = 120  # Slurm sends the preemption signal this long before the time limit


class Preemption:
    """Holds submitit's handler of the preemption signal and records that the signal came."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.handler = None

    def install(self) -> "Preemption":
        sig = submitit.JobEnvironment._usr_sig()
        self.handler = signal.getsignal(sig)  # submitit's SignalHandler.checkpoint_and_try_requeue
        signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, frame) -> None:
        self.signum = signum

    def requested(self) -> bool:
        return self.signum is not None

    def requeue(self) -> None:
        """After the checkpoint: submitit requeues (rank 0 does not return); the other ranks exit
        without a result, the requeued job will write it."""
        if callable(self.handler):
            self.handler(self.signum, None)
        sys.exit(0)


def rendezvous_port(job_id: str) -> int:
    """MASTER_PORT of job `job_id`: the same on every task, outside the ephemeral ports (above)."""
    return random.Random(str(job_id)).randint(*RENDEZVOUS_PORTS)


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, program_dir: str | Path, max_steps: int | None = None, out_dir: str | Path | None = None,
                 checkpoints: bool = True):
        self.program_dir = str(Path(program_dir).resolve())
        self.max_steps = max_steps
        self.out_dir = str(out_dir) if out_dir else None
        self.checkpoints = checkpoints  # False: a run nobody resumes writes no checkpoint (but on preemption)
        self.steps_done = 0

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The job to requeue: the same program, with what is left of `max_steps`."""
        left = None if self.max_steps is None else max(0, self.max_steps - self.steps_done)
        return submitit.helpers.DelayedSubmission(TrainJob(self.program_dir, left, self.out_dir, self.checkpoints))

    def __call__(self) -> Any:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            dist_env = submitit.helpers.TorchDistributedEnvironment()
            if "MASTER_PORT" not in os.environ:  # a port the user or the cluster set is kept
                dist_env.master_port = rendezvous_port(env.job_id)
            dist_env.export(set_cuda_visible_devices=False)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        preemption = Preemption().install()
        main = runpy.run_path(str(Path(self.program_dir) / "train.py"))["main"]
        optional = {} if self.checkpoints else {"checkpoints": False}  # programs emitted before it keep working
        result = main(max_steps=self.max_steps, out_dir=Path(self.out_dir) if self.out_dir else None,
                      stop_requested=preemption.requested, **optional)
        if result.get("preempted"):
            self.steps_done = len(result["losses"])
            preemption.requeue()
        return result
