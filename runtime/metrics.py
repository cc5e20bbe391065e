"""Where training metrics go: JSON lines always (run/metrics.jsonl, which `vlac submit` follows),
TensorBoard by default (run/tensorboard/), Weights & Biases when WANDB_PROJECT is set and wandb is
installed, and a progress display on the main rank (a live bar on a terminal, one line per logged
step otherwise, e.g. in a Slurm log).

Records are one JSON object per line with an "event": "start" (total steps, the plan's predicted
step time and memory), "step", "eval" (held-out loss), "summary" (end of the run) and others
(resumed, preempted, data report). This module imports no torch: vlac/follow.py reads the same
records on the submitting machine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vlac.compiler.number_format import data_size, duration

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SCALARS = ("loss", "ar_loss", "aux_loss", "grad_norm", "lr", "tokens_per_s", "dropped_fraction", "step_time_s",
           "peak_memory_bytes")


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def wandb_configured() -> bool:
    """W&B only when asked for (WANDB_PROJECT set) and installed."""
    return bool(os.environ.get("WANDB_PROJECT")) and importlib.util.find_spec("wandb") is not None


class MetricsWriter:
    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool | None = None, config: dict | None = None):
        self.enabled = enabled
        self.path = Path(out_dir) / METRICS_FILE
        self.tb = self.wandb = None
        if not enabled:
            return
        if tensorboard_available() if tensorboard is None else tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / TENSORBOARD_DIR))
        if wandb_configured():
            import wandb

            self.wandb = wandb.init(project=os.environ["WANDB_PROJECT"], config=config or {}, dir=str(out_dir))

    def event(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}, sort_keys=True) + "\n")

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{prefix}/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"{prefix}/{k}": v for k, v in values.items()}, step=step)

    def step(self, met, extra: dict[str, float] | None = None) -> None:
        """One training step; `extra`: the program's own metrics, logged beside the built-in ones."""
        record = {**dataclasses.asdict(met), **(extra or {})}
        self.event({"event": "step", **record})
        self.scalars("train", {k: record[k] for k in SCALARS} | dict(extra or {}), met.step)
        self.scalars("modality_loss", record["modality_loss"], met.step)
        self.scalars("mtp_loss", record["mtp_loss"], met.step)
        self.scalars("modality_grad_norm", record["modality_grad_norm"], met.step)

    def eval(self, step: int, losses: dict[str, float]) -> None:
        self.event({"event": "eval", "step": step, **losses})
        self.scalars("eval", losses, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.finish()


# ---- what a person reads ------------------------------------------------------------------------

def format_step(rec: dict[str, Any], total: int, predicted: dict[str, Any] | None = None) -> str:
    """One step record as a line: loss, tokens/s, the measured step time and memory beside the
    plan's predictions (when known)."""
    predicted = predicted or {}
    flag = "  [skipped: non-finite]" if rec.get("skipped") else ""
    mods = " ".join(f"{k}={v:.3f}" for k, v in rec.get("modality_loss", {}).items())
    mods += "".join(f" mtp{k}={v:.3f}" for k, v in rec.get("mtp_loss", {}).items())
    timing = f"step {duration(rec['step_time_s'])}" if rec.get("step_time_s") else ""
    if timing and predicted.get("step_time_s"):
        timing += f" (plan {duration(predicted['step_time_s'])})"
    memory = f"mem {data_size(rec['peak_memory_bytes'])}" if rec.get("peak_memory_bytes") else ""
    if memory and predicted.get("peak_memory_gb"):
        memory += f" (plan {data_size(predicted['peak_memory_gb'] * 1e9)})"
    extra = " ".join(f"{k} {v:.4g}" for k, v in rec.items() if k not in STEP_KEYS and isinstance(v, (int, float)))
    parts = [f"step {rec['step'] + 1:>6}/{total}", f"loss {rec['loss']:.4f}", f"|g| {rec['grad_norm']:.3f}",
             f"lr {rec['lr']:.2e}", f"{rec['tokens_per_s']:,.0f} tok/s", timing, memory, extra, mods]
    return "  ".join(p for p in parts if p) + flag


STEP_KEYS = {"event", "time", "step", "loss", "ar_loss", "aux_loss", "grad_norm", "lr", "tokens_per_s",
             "modality_loss", "mtp_loss", "expert_load", "dropped_fraction", "skipped", "modality_grad_norm", "load_imbalance",
             "router_entropy", "step_time_s", "data_time_s", "peak_memory_bytes"}


def format_summary(rec: dict[str, Any]) -> str:
    parts = [f"{rec['steps']} steps in {duration(rec['wall_s'])}"]
    if rec.get("first_loss") is not None:
        parts.append(f"loss {rec['first_loss']:.4f} -> {rec['last_loss']:.4f}")
    if rec.get("eval_loss") is not None:
        parts.append(f"held-out loss {rec['eval_loss']:.4f}")
    if rec.get("tokens_per_s"):
        parts.append(f"{rec['tokens_per_s']:,.0f} tok/s")
    if rec.get("step_time_s"):
        vs = f" ({rec['step_time_s'] / rec['predicted_step_time_s']:.2f} x plan)" if rec.get("predicted_step_time_s") else ""
        parts.append(f"step {duration(rec['step_time_s'])}{vs}")
    if rec.get("peak_memory_bytes"):
        parts.append(f"peak memory {data_size(rec['peak_memory_bytes'])} ({rec.get('memory_kind', '')})")
    return "run summary: " + ", ".join(parts) + (" [preempted]" if rec.get("preempted") else "")


class Progress:
    """A rich progress bar on a terminal; plain lines on stderr otherwise."""

    def __init__(self, total: int, start: int, enabled: bool, predicted: dict[str, Any] | None = None):
        self.total, self.enabled, self.predicted = total, enabled, predicted or {}
        self.live = enabled and sys.stderr.isatty()
        self.bar = None
        if self.live:
            self.bar, self.task = live_bar(total, start)

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
        record = dataclasses.asdict(met)
        if self.bar is not None:
            self.bar.update(self.task, completed=met.step + 1, description=format_step(record, self.total, self.predicted))
        elif log:
            print(format_step(record, self.total, self.predicted), file=sys.stderr, flush=True)


def live_bar(total: int, start: int, stderr: bool = True):
    """A rich progress bar (steps done, ETA) whose description carries the latest step's figures."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

    bar = RichProgress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                       TextColumn("{task.description}"), console=Console(stderr=stderr))
    return bar, bar.add_task("", total=total, completed=start)
