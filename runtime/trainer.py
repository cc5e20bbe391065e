"""The training loop the emitted program runs: micro-batches from the spec's data mixture, gradient
accumulation, clipping, the LR schedule, metrics, checkpoints and resume, skip-and-report on a
non-finite loss, and a clean stop (checkpoint first) when the job is preempted."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vlac.spec import Experiment

from .batch import tower_modalities
from .checkpoint import Checkpointer
from .data import SyntheticData, loss_tokens, make_data
from .diagnostics import moe_metrics
from .distributed import DistEnv, all_reduce_sum, param_digest
from .metrics import MetricsWriter, Progress, format_summary
from .moe import update_balancing_bias
from .parallel import ParallelModel
from .parallel.mesh import Mesh
from .parallel.modality_clip import ModalityClipper
from .parallel.stats import sum_over_replicas
from .watchdog import HEARTBEAT_DIR, Watchdog, Watched, end_process


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
    mtp_loss: dict[str, float] = field(default_factory=dict)  # mean CE per MTP depth (runtime/mtp.py)
    expert_load: list[list[float]] = field(default_factory=list)
    dropped_fraction: float = 0.0
    skipped: bool = False
    modality_grad_norm: dict[str, float] = field(default_factory=dict)
    load_imbalance: list[float] = field(default_factory=list)
    router_entropy: list[float] = field(default_factory=list)
    step_time_s: float = 0.0  # forward, backward and optimiser (tokens_per_s is over this)
    data_time_s: float = 0.0  # building the micro-batches (synchronous here, prefetched in production loaders)
    peak_memory_bytes: float = 0.0  # this rank's peak so far: CUDA allocator on a GPU, process RSS on CPU


def rank_micro_batches(data: SyntheticData, step: int, plan: dict[str, Any], mesh: Mesh,
                       device: torch.device) -> list[dict[str, torch.Tensor]]:
    """This rank's micro-batches of `step`: micro-batch `micro` holds samples (micro x dp + dp_rank)
    x mb .. + mb - 1 of the global batch, so every layout with the same micro-batch size sees the
    same micro-batches. Their `loss_norm` is the global batch's count of target tokens: this
    rank's own count summed over the data-parallel replicas (collective over dp), so no rank
    builds a sample outside its share."""
    mb, m, dp = plan["microbatch_size"], plan["num_microbatches"], plan["dp"]
    # loss_norm 1.0 is a placeholder until the global count is known, below
    batches = [data.micro_batch(step, (micro * dp + mesh.dp_rank) * mb, mb, 1.0, device) for micro in range(m)]
    norm = sum_over_replicas(loss_tokens(batches), mesh).float()
    for batch in batches:
        batch["loss_norm"] = norm
    return batches


class Trainer:
    def __init__(self, exp: Experiment, plan: dict[str, Any], model: ParallelModel, optimizer: torch.optim.Optimizer,
                 scheduler, env: DistEnv, out_dir: Path):
        self.exp, self.plan, self.env = exp, plan["plan"], env
        self.predicted = plan.get("predicted", {})  # the compiler's step time and memory, shown beside the measured
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.data = make_data(exp)  # packed token shards when the mixture has sources
        self.out_dir = Path(out_dir)
        self.ckpt = Checkpointer(self.out_dir / "checkpoints", exp.train.keep_last, env.is_main)
        self.metrics = MetricsWriter(self.out_dir, enabled=env.is_main, config=plan)
        self.eval_data = None  # the held-out split, built on the first evaluation
        self.modalities = list(exp.modalities)
        self.clipper = ModalityClipper(exp, model) if exp.optimizer.per_modality_clip else None
        self.step = 0
        self.stop_requested: Callable[[], bool] = lambda: False  # set by the launcher on preemption
        self.preempted = False
        self.checkpoint_at_end = True  # benchmarks turn the final save off

    # ---- resume ---------------------------------------------------------------------------
    def resume(self) -> int:
        latest = self.ckpt.latest()
        if latest is not None:
            extra = self.ckpt.load(latest, self.model.model, self.optimizer)
            self.step = int(extra["step"])
            if hasattr(self.data, "check_state"):  # the loader continues at the checkpoint's next sequence
                self.data.check_state(extra.get("data"), self.step)
            self.scheduler.last_epoch = self.step
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr()):
                group["lr"] = lr
            self.metrics.event({"event": "resumed", "step": self.step, "from": latest.name,
                                "layout": self.model.dims.summary()})
        elif self.exp.backbone.init is not None:  # a fresh run starts from the pretrained backbone
            from .hf.load import load_pretrained
            self.metrics.event({"event": "pretrained", **load_pretrained(self.model.model, self.exp)})
        if latest is None and tower_modalities(self.exp):  # and from its pretrained vision towers
            from .hf.tower_load import load_vision_towers
            self.metrics.event({"event": "pretrained_towers", **load_vision_towers(self.model.model, self.exp)})
        return self.step

    def save(self) -> Path:
        return self.ckpt.save(self.step, self.model.model, self.optimizer,
                              {"experiment": self.exp.name, "layout": self.model.dims.summary(),
                               **({"data": self.data.state(self.step)} if hasattr(self.data, "state") else {})})

    # ---- one optimiser step -------------------------------------------------------------------
    def micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        return rank_micro_batches(self.data, step, self.plan, self.model.mesh, self.env.device)

    def train_step(self) -> StepMetrics:
        self._beat(busy=True)
        t_data = time.perf_counter()
        batches = self.micro_batches(self.step)
        t0 = time.perf_counter()
        if self.clipper is not None:
            stats, mod_norms = self.clipper.forward_backward(batches)
        else:
            stats, mod_norms = self.model.forward_backward(batches), {}
        grad_norm = self.model.grad_norm()
        if self.exp.optimizer.grad_clip and self.clipper is None:
            self.model.clip_(self.exp.optimizer.grad_clip, grad_norm)
        ar, aux, mtp = float(stats.ar), float(stats.aux), float(stats.mtp)
        skipped = not (math.isfinite(ar + mtp) and math.isfinite(aux) and math.isfinite(grad_norm))
        if not skipped:  # skip and report, never step on NaN/inf
            self.optimizer.step()
            self._balance(stats.loads)
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)
        elapsed = time.perf_counter() - t0
        moe = moe_metrics(stats.moe_outputs())
        met = StepMetrics(self.step, ar + mtp + aux, ar, aux, grad_norm, lr, self.exp.train.global_batch_tokens / elapsed,
                          stats.modality_loss(self.modalities), stats.mtp_loss(), stats.loads.tolist() if stats.n_moe else [],
                          float(stats.dropped), skipped, mod_norms, moe.get("load_imbalance", []),
                          moe.get("router_entropy", []), elapsed, t0 - t_data, self.peak_memory())
        self.step += 1
        self._beat()
        return met

    def _beat(self, busy: bool = False) -> None:
        if getattr(self, "watchdog", None) is not None:
            self.watchdog.tick(self.step, busy)

    def _balance(self, loads: torch.Tensor) -> None:
        """Aux-loss-free balancing from the global expert loads, for the MoE layers this rank holds."""
        for row, layer in self.model.moe_layers():
            update_balancing_bias(layer, loads[row])

    def _agree_to_stop(self) -> bool:
        flag = torch.tensor([1.0 if self.stop_requested() else 0.0], device=self.env.device)
        stop = bool(all_reduce_sum(flag).item() > 0)
        self._beat()  # evaluation and this collective completed: still progressing
        return stop

    agree_to_stop = _agree_to_stop  # collective: True on every rank when any rank was asked to stop

    def peak_memory(self) -> float:
        if self.env.device.type == "cuda":
            return float(torch.cuda.max_memory_allocated(self.env.device))
        import resource

        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB

    # ---- held-out evaluation, logging, the run summary --------------------------------------
    def evaluate(self) -> dict[str, float]:
        """The loss on `train.eval_batches` global batches of the held-out split: the forward pass
        of training under every layout (the pipeline schedule's forward-only pass included), under
        no_grad, so no backward runs and no gradient is allocated."""
        if self.eval_data is None:
            self.eval_data = make_data(self.exp, "eval")  # held-out episodes, or held-out documents (vlac/data/split.py)
        ar = aux = mtp = 0.0
        for i in range(self.exp.train.eval_batches):
            with torch.no_grad():
                stats = self.model.forward(
                    rank_micro_batches(self.eval_data, i, self.plan, self.model.mesh, self.env.device))
            ar, aux, mtp = ar + float(stats.ar), aux + float(stats.aux), mtp + float(stats.mtp)
        n = self.exp.train.eval_batches
        out = {"loss": (ar + mtp + aux) / n, "ar_loss": ar / n}
        if self.exp.losses.mtp:  # the weighted MTP term (runtime/mtp.py)
            out["mtp_loss"] = mtp / n
        return out

    def log(self, met: StepMetrics, extra: dict[str, float] | None = None) -> None:
        self.metrics.step(met, extra)

    def start(self, last: int) -> Progress:
        """Announce the run (the record `vlac submit` follows) and return its progress display."""
        self.metrics.event({"event": "start", "step": self.step, "total_steps": last, "world": self.env.world,
                            "layout": self.model.dims.summary(), "predicted": self.predicted,
                            "memory_kind": self._memory_kind()})
        self._started = time.perf_counter()
        # a rank that makes no progress for train.stall_timeout_s is named and the job ends (exit 3)
        self.watchdog = Watchdog(self.out_dir / HEARTBEAT_DIR, self.env.rank, self.env.world,
                                 self.exp.train.stall_timeout_s, on_stall=self._stalled)
        progress = Progress(last, self.step, enabled=self.env.is_main, predicted=self.predicted)
        return Watched(progress, self.watchdog.start())

    def _stalled(self, message: str) -> None:
        """From the watchdog's thread: log the stall for `vlac submit`, then end this process."""
        try:
            self.metrics.event({"event": "stalled", "step": self.step, "rank": self.env.rank, "message": message})
        finally:
            end_process(message)

    def _memory_kind(self) -> str:
        return "CUDA allocator peak" if self.env.device.type == "cuda" else "process RSS on CPU"

    def summary(self, history: list[StepMetrics], eval_loss: float | None = None) -> dict[str, Any]:
        """The end-of-run record: losses, throughput and step time after the first step (warm-up)
        against the plan's prediction, peak memory, the last held-out loss."""
        timed = history[1:] or history
        rec: dict[str, Any] = {
            "event": "summary", "steps": len(history), "preempted": self.preempted,
            "wall_s": time.perf_counter() - getattr(self, "_started", time.perf_counter()),
            "first_loss": history[0].loss if history else None, "last_loss": history[-1].loss if history else None,
            "eval_loss": eval_loss, "memory_kind": self._memory_kind(),
            "tokens_per_s": sum(m.tokens_per_s for m in timed) / len(timed) if timed else 0.0,
            "step_time_s": sum(m.step_time_s for m in timed) / len(timed) if timed else 0.0,
            "predicted_step_time_s": self.predicted.get("step_time_s"),
            "peak_memory_bytes": max((m.peak_memory_bytes for m in history), default=0.0),
            "predicted_peak_memory_gb": self.predicted.get("peak_memory_gb")}
        self.report_data()
        self.metrics.event(rec)
        if self.env.is_main:
            print(format_summary(rec), file=sys.stderr, flush=True)
        return rec

    def report_data(self) -> None:
        """Packed data's packing efficiency, tokens per source and skipped samples: logged once per
        run (fit() and summary() both end one), and as a line on stderr."""
        if not hasattr(self.data, "report") or getattr(self, "_data_reported", False):
            return
        self._data_reported = True
        report = {**self.data.report(), "step": self.step}
        self.metrics.event(report)
        if self.env.is_main:
            print(self.data.report_line(report), file=sys.stderr, flush=True)

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None) -> list[StepMetrics]:
        """Train to the spec's last step (or `max_steps` more). Returns early, after a checkpoint,
        when a stop was requested (preemption); `self.preempted` then says so."""
        total = self.exp.train.total_steps
        stop = total if max_steps is None else min(total, self.step + max_steps)
        history: list[StepMetrics] = []
        self.preempted = False
        with self.start(stop) as progress:
            while self.step < stop:
                met = self.train_step()
                history.append(met)
                log = met.step % self.exp.train.log_every == 0 or met.skipped or self.step == stop
                if log:
                    self.log(met)
                progress.update(met, log)
                preempted = self._agree_to_stop()
                at_end = self.step == stop and self.checkpoint_at_end
                if preempted or self.step % self.exp.train.checkpoint_every == 0 or at_end:
                    self.save()
                if preempted:
                    self.preempted = True
                    self.metrics.event({"event": "preempted", "step": self.step})
                    break
        self.report_data()
        self.metrics.close()
        return history

    def result(self, history: list[StepMetrics]) -> dict[str, Any]:
        """What the program returns (to submitit): the run's losses and gradient norms, whether it
        stopped for preemption, and a digest of this rank's parameters (collective)."""
        return {"losses": [m.loss for m in history], "grad_norms": [m.grad_norm for m in history],
                "steps": [m.step for m in history], "preempted": self.preempted, "rank": self.env.rank,
                "layout": self.model.dims.summary(), "param_sha256": param_digest(self.model.model)}
