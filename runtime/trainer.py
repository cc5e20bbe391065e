"""The training loop the emitted program runs: micro-batches, accumulation, clipping, logging,
checkpoints and resume, skip-and-report on a non-finite loss."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vlac.spec import Experiment

from .checkpoint import Checkpointer
from .data import SyntheticData
from .distributed import DistEnv, all_reduce_sum, no_sync, unwrap
from .losses import Objective
from .moe import MoELayer, update_balancing_bias


@dataclass
class StepMetrics:
    step: int
    loss: float
    ar_loss: float
    aux_loss: float
    grad_norm: float
    lr: float
    tokens_per_s: float
    modality_loss: dict[str, float] = field(default_factory=dict)
    expert_load: list[list[float]] = field(default_factory=list)
    dropped_fraction: float = 0.0
    skipped: bool = False


class Trainer:
    def __init__(self, exp: Experiment, plan: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, env: DistEnv, out_dir: Path):
        self.exp, self.plan, self.env = exp, plan["plan"], env
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.objective = Objective(model, exp).to(env.device)
        self.data = SyntheticData(exp)
        self.out_dir = Path(out_dir)
        self.ckpt = Checkpointer(self.out_dir / "checkpoints", exp.train.keep_last, env.is_main)
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.modalities = list(exp.modalities)
        self.step = 0

    def autocast(self):
        """bf16 autocast on CUDA when the spec asks for bf16; CPU runs stay fp32 (bf16 matmul
        on CPUs is about a hundred times slower)."""
        if self.env.device.type == "cuda" and self.exp.precision.dtype == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- resume ---------------------------------------------------------------------------
    def resume(self) -> int:
        latest = self.ckpt.latest()
        if latest is not None:
            extra = self.ckpt.load(latest, self.model, self.optimizer)
            self.step = int(extra["step"])
            self.scheduler.last_epoch = self.step
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr()):
                group["lr"] = lr
            self._log_line({"event": "resumed", "step": self.step, "from": latest.name})
        return self.step

    # ---- one optimiser step -------------------------------------------------------------------
    def train_step(self) -> StepMetrics:
        p, dev = self.plan, self.env.device
        t0 = time.perf_counter()
        dp_rank = self.env.rank % p["dp"]
        mb, m = p["microbatch_size"], p["num_microbatches"]
        loss_norm = self.data.global_loss_tokens(self.step)
        ar_sum = torch.zeros((), device=dev)
        aux_sum = torch.zeros((), device=dev)
        mod_sum = torch.zeros(len(self.modalities), device=dev)
        mod_cnt = torch.zeros(len(self.modalities), device=dev)
        loads, dropped = None, torch.zeros((), device=dev)
        for micro in range(m):
            first = (micro * p["dp"] + dp_rank) * mb
            batch = self.data.micro_batch(self.step, first, mb, loss_norm, dev)
            with no_sync(self.model, micro == m - 1):
                with self.autocast():
                    out = self.objective(batch)
                # ar is normalised by the global token count, so summing over micro-batches and
                # ranks gives the global mean; data-parallel gradient averaging divides by dp,
                # which the factor dp undoes. The aux losses are per micro-batch means.
                (out["ar_loss"] * p["dp"] + out["aux_loss"] / m).backward()
            ar_sum += out["ar_loss"].detach()
            aux_sum += out["aux_loss"].detach() / (m * p["dp"])
            mod_sum += out["modality_loss_sum"].detach()
            mod_cnt += out["modality_count"].detach()
            if "expert_load" in out:
                load = out["expert_load"].detach()
                loads = load if loads is None else loads + load
                dropped += out["dropped_fraction"].detach().mean() / (m * p["dp"])
        stats = torch.cat([ar_sum.view(1), aux_sum.view(1), mod_sum, mod_cnt, dropped.view(1)])
        all_reduce_sum(stats)
        if loads is not None:
            all_reduce_sum(loads)
        grad_norm = self._clip()
        ar, aux = float(stats[0]), float(stats[1])
        skipped = not (math.isfinite(ar) and math.isfinite(aux) and math.isfinite(grad_norm))
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)  # skip and report, never step on NaN/inf
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if loads is not None:
                self._balance(loads)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        n = len(self.modalities)
        sums, counts = stats[2:2 + n], stats[2 + n:2 + 2 * n]
        per_mod = {name: float(sums[i] / counts[i]) for i, name in enumerate(self.modalities) if counts[i] > 0}
        if torch.cuda.is_available() and dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elapsed = time.perf_counter() - t0
        metrics = StepMetrics(self.step, ar + aux, ar, aux, grad_norm, lr,
                              self.exp.train.global_batch_tokens / elapsed, per_mod,
                              loads.tolist() if loads is not None else [], float(stats[-1]), skipped)
        self.step += 1
        return metrics

    def _clip(self) -> float:
        params = [q for q in self.model.parameters() if q.grad is not None]
        max_norm = self.exp.optimizer.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2 returns a DTensor
            norm = norm.full_tensor()
        return float(norm)

    def _balance(self, loads: torch.Tensor) -> None:
        moe_layers = [mod for mod in unwrap(self.model).modules() if isinstance(mod, MoELayer)]
        for layer, load in zip(moe_layers, loads):
            update_balancing_bias(layer, load)

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None) -> list[StepMetrics]:
        total = self.exp.train.total_steps
        stop = total if max_steps is None else min(total, self.step + max_steps)
        history = []
        while self.step < stop:
            met = self.train_step()
            history.append(met)
            if self.env.is_main and (met.step % self.exp.train.log_every == 0 or met.skipped or self.step == stop):
                self._log(met, total)
            if self.step % self.exp.train.checkpoint_every == 0 or self.step == stop:
                self.ckpt.save(self.step, self.model, self.optimizer, {"experiment": self.exp.name})
        return history

    def _log(self, met: StepMetrics, total: int) -> None:
        self._log_line({"event": "step", **met.__dict__})
        flag = "  [skipped: non-finite]" if met.skipped else ""
        mods = " ".join(f"{k}={v:.3f}" for k, v in met.modality_loss.items())
        print(f"step {met.step + 1:>6}/{total}  loss {met.loss:.4f}  |g| {met.grad_norm:.3f}  "
              f"lr {met.lr:.2e}  {met.tokens_per_s:,.0f} tok/s  {mods}{flag}", file=sys.stderr, flush=True)

    def _log_line(self, record: dict[str, Any]) -> None:
        if not self.env.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
