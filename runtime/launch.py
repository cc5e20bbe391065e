"""The submitit side of a program: one callable per job that every task runs.

`TrainJob` is Checkpointable: on preemption or time-out submitit calls `checkpoint`, which
requeues the same callable; the program resumes from its last distributed checkpoint.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from typing import Any

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, program_dir: str | Path, max_steps: int | None = None, out_dir: str | Path | None = None):
        self.program_dir = str(Path(program_dir).resolve())
        self.max_steps = max_steps
        self.out_dir = str(out_dir) if out_dir else None

    def __call__(self) -> Any:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        main = runpy.run_path(str(Path(self.program_dir) / "train.py"))["main"]
        return main(max_steps=self.max_steps, out_dir=Path(self.out_dir) if self.out_dir else None)
