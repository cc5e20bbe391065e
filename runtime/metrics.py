"""Where training metrics go: JSON lines always, TensorBoard when the `tensorboard` package is
installed, and a progress display on the main rank (a live bar on a terminal, one line per logged
step otherwise, e.g. in a Slurm log)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class MetricsWriter:
    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool | None = None):
        self.enabled = enabled
        self.path = Path(out_dir) / METRICS_FILE
        self.tb = None
        if enabled and (tensorboard_available() if tensorboard is None else tensorboard):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / TENSORBOARD_DIR))

    def event(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def step(self, met) -> None:
        record = dataclasses.asdict(met)
        self.event({"event": "step", **record})
        if self.tb is None:
            return
        for key in ("loss", "ar_loss", "aux_loss", "grad_norm", "lr", "tokens_per_s", "dropped_fraction"):
            self.tb.add_scalar(f"train/{key}", record[key], met.step)
        for name, value in record["modality_loss"].items():
            self.tb.add_scalar(f"modality_loss/{name}", value, met.step)
        for name, value in record["modality_grad_norm"].items():
            self.tb.add_scalar(f"modality_grad_norm/{name}", value, met.step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()


def format_step(met, total: int) -> str:
    flag = "  [skipped: non-finite]" if met.skipped else ""
    mods = " ".join(f"{k}={v:.3f}" for k, v in met.modality_loss.items())
    return (f"step {met.step + 1:>6}/{total}  loss {met.loss:.4f}  |g| {met.grad_norm:.3f}  lr {met.lr:.2e}  "
            f"{met.tokens_per_s:,.0f} tok/s  {mods}{flag}")


class Progress:
    """A rich progress bar on a terminal; plain lines on stderr otherwise."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.live = enabled and sys.stderr.isatty()
        self.bar = None
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self.bar = RichProgress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    TextColumn("{task.description}"), console=Console(stderr=True))
            self.task = self.bar.add_task("", total=total, completed=start)

    def __enter__(self) -> "Progress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, met, log: bool) -> None:
        """Every step; `log`: this step is also written out (train.log_every)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=met.step + 1,
                            description=f"loss {met.loss:.4f} |g| {met.grad_norm:.3f}" + (" skipped" if met.skipped else ""))
        elif log:
            print(format_step(met, self.total), file=sys.stderr, flush=True)
