"""Follow a submitted training job: read the JSON-lines metrics file the job appends to
(run/metrics.jsonl of the program, on a file system the job and this machine share, as local
and Slurm jobs do) and show its progress until the job ends: a live bar on a terminal (step,
loss, tokens/s, ETA, measured vs predicted step time and memory), one line per logged step
otherwise; then the run summary.

    job = vlac.submit(program, executor="local")
    vlac.follow(job, program / "run" / "metrics.jsonl", start_at=0)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from vlac.runtime.metrics import METRICS_FILE, format_step, format_summary, live_bar

POLL_S = 0.5


class MetricsTail:
    """The records appended to a JSON-lines file since `start_at` (a byte offset), read as they
    arrive; a line still being written is left for the next read."""

    def __init__(self, path: str | Path, start_at: int = 0):
        self.path, self.offset = Path(path), start_at

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        records = []
        for line in data[:end].splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # not a metrics record (a partial write from a killed job)
        return records


def size_of(path: str | Path) -> int:
    """Where following starts: records written before the job (an earlier run) are not shown."""
    p = Path(path)
    return p.stat().st_size if p.exists() else 0


class Display:
    """What a person sees: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO, live: bool | None = None):
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self.total, self.predicted, self.bar, self.task = 0, {}, None, None
        self.started: tuple[float, int] | None = None  # (time, step) of the start record, for the ETA

    def show(self, rec: dict[str, Any]) -> None:
        kind = rec.get("event")
        if kind == "start":
            self.total, self.predicted = rec["total_steps"], rec.get("predicted", {})
            self.started = (rec.get("time", 0.0), rec["step"])
            if self.live and self.bar is None:
                self.bar, self.task = live_bar(self.total, rec["step"], stderr=self.stream is sys.stderr)
                self.bar.start()
            self.line(f"training {rec['layout']} on {rec['world']} process(es), steps {rec['step']}..{self.total}")
        elif kind == "step":
            text = format_step(rec, self.total, self.predicted) + self.eta(rec)
            if self.bar is not None:
                self.bar.update(self.task, completed=rec["step"] + 1, description=text)
            else:
                self.line(text)
        elif kind == "eval":
            self.line(f"held-out loss {rec['loss']:.4f} at step {rec['step']}")
        elif kind == "summary":
            self.close()
            self.line(format_summary(rec))
        elif kind == "stalled":  # the watchdog of a rank (runtime/watchdog.py) ended the job
            self.close()
            self.line(str(rec.get("message", "a rank stopped making progress")))
        elif kind in ("resumed", "preempted"):
            self.line(f"{kind} at step {rec['step']}")

    def eta(self, rec: dict[str, Any]) -> str:
        """Time left at the mean pace since the start record (the bar on a terminal has its own)."""
        if self.bar is not None or self.started is None or "time" not in rec:
            return ""
        (t0, s0), done = self.started, rec["step"] + 1
        if done <= s0:
            return ""
        left = (rec["time"] - t0) / (done - s0) * (self.total - done)
        return f"  ETA {int(left) // 3600}:{int(left) % 3600 // 60:02d}:{int(left) % 60:02d}"

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def follow(job, metrics: str | Path, start_at: int = 0, stream: TextIO | None = None,
           live: bool | None = None, poll_s: float = POLL_S, sleep: Callable[[float], None] = time.sleep) -> None:
    """Show the job's progress from `metrics` (a metrics.jsonl, or the run folder holding it)
    until `job.done()`; returns then (the caller asks the job for its result)."""
    path = Path(metrics)
    if path.is_dir() or path.suffix != ".jsonl":
        path = path / METRICS_FILE
    tail, display = MetricsTail(path, start_at), Display(stream or sys.stderr, live)
    try:
        while True:
            done = job.done()
            for rec in tail.read():
                display.show(rec)
            if done:
                return
            sleep(poll_s)
    finally:
        display.close()
