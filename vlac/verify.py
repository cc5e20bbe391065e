"""`vlac verify`: prove parallel layouts on CPU before anyone spends GPU hours on them.

The spec (its `tiny` profile when the spec itself is too large for a CPU) is planned once per
layout, pinned to that layout on a one-node cluster, emitted, and run for a few steps on local
processes (submitit's local executor, gloo, fp32, one thread per process); once more as a single
process. Every layout uses the same micro-batch size, so each sees the same micro-batches and a
correct layout reproduces the single-process losses and gradient norms up to float reassociation.

Layouts are written as degrees joined by `x`, with options after `+`:

    dp2  fsdp2  tp2  pp2  ep2  dp2xtp2  fsdp2xpp2  pp2+v2  pp2+gpipe  tp2+nosp  fsdp2+zero2  dp2+full

dpN replicated data parallel (zero 0); fsdpN sharded (zero 3; +zero1/+zero2 for the others); tpN
tensor parallel with sequence parallelism (+nosp without); ppN pipeline (1F1B; +gpipe, +zb zero bubble, +vK for the
interleaved schedule with K stages per rank); epN expert parallel, folded out of dp (implies dpN
when no dp is given; dropless MoE layers fold it over dp x cp x tp, e.g. dp1xtp2xep2); +full /
+selective activation recompute; +etp splits the MoE experts over tp (expert tensor parallelism,
etp = tp).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vlac.compiler.moe_routing import ep_fold_ranks
from vlac.spec import Experiment
from vlac.spec.system import Cluster

from . import api

DEFAULT_LAYOUTS = "dp2,fsdp2,tp2,pp2,ep2"
MICROBATCH_SIZES = (1, 2, 4, 8, 16, 32)
TOLERANCE = 1e-4
LARGE_PARAMS = 50_000_000  # above this, a spec with a `tiny` profile is verified through it
DEGREE = re.compile(r"^(dp|fsdp|tp|pp|ep|cp)(\d{1,6})$")  # six digits: past any world, short of int()'s digit limit
SHOWN = 60  # characters of a layout or token an error message echoes
OPTIONS = {"nosp", "gpipe", "zb", "full", "selective", "zero1", "zero2", "zero3", "etp"}


class LayoutSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Layout:
    name: str
    dp: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1
    cp: int = 1
    zero: int = 0
    sequence_parallel: bool = False
    schedule: str = "1f1b"
    virtual_stages: int = 1
    recompute: str = "none"
    etp: int = 1

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    def pins(self, microbatch_size: int) -> dict[str, Any]:
        return {"dp": self.dp, "tp": self.tp, "pp": self.pp, "ep": self.ep, "cp": self.cp, "zero": self.zero,
                "sequence_parallel": self.sequence_parallel, "schedule": self.schedule,
                "virtual_stages": self.virtual_stages, "recompute": self.recompute, "etp": self.etp,
                "microbatch_size": microbatch_size}


SINGLE = Layout("single")


def _shown(text: str) -> str:
    """`text` as an error message quotes it: whole up to SHOWN characters, else its start and length."""
    return repr(text) if len(text) <= SHOWN else f"{text[:SHOWN]!r}... ({len(text):,} characters)"


def parse_layout(text: str) -> Layout:
    """`dp2xtp2+full` -> Layout; errors name the token and list what is valid."""
    try:
        return _parse_layout(text.strip())
    except LayoutSyntaxError as e:
        raise LayoutSyntaxError(f"layout {_shown(text.strip())}: {e}") from None


def _parse_layout(name: str) -> Layout:
    head, *opts = name.split("+")
    degrees: dict[str, int] = {}
    for token in head.split("x"):
        m = DEGREE.match(token)
        if not m:
            raise LayoutSyntaxError(f"{_shown(token)} is not a degree; write dpN, fsdpN, tpN, ppN, epN "
                                    f"or cpN joined by 'x' (e.g. dp2xtp2)")
        if m.group(1) in degrees or (m.group(1) in ("dp", "fsdp") and {"dp", "fsdp"} & set(degrees)):
            raise LayoutSyntaxError(f"{_shown(token)} repeats a dimension")
        degrees[m.group(1)] = int(m.group(2))
        if degrees[m.group(1)] < 1:
            raise LayoutSyntaxError(f"{_shown(token)} has degree 0; a degree is a whole number >= 1 "
                                    f"(e.g. {m.group(1)}2)")
    kw: dict[str, Any] = {"name": name}
    sharded = "fsdp" in degrees
    kw["dp"] = degrees.get("fsdp", degrees.get("dp", degrees.get("ep", 1)))
    kw["zero"] = 3 if sharded else 0
    for key in ("tp", "pp", "ep", "cp"):
        kw[key] = degrees.get(key, 1)
    kw["sequence_parallel"] = kw["tp"] > 1
    for opt in opts:
        if re.fullmatch(r"v\d{1,6}", opt):
            if int(opt[1:]) < 1:
                raise LayoutSyntaxError(f"+{opt} has no stages; write +vK with K >= 2")
            kw["virtual_stages"], kw["schedule"] = int(opt[1:]), "interleaved_1f1b"
        elif opt not in OPTIONS:
            raise LayoutSyntaxError(f"unknown option {_shown(opt)}; options: "
                                    f"{', '.join(sorted(OPTIONS))}, vN")
        elif opt == "nosp":
            kw["sequence_parallel"] = False
        elif opt == "etp":
            if kw["tp"] < 2:
                raise LayoutSyntaxError("+etp splits the experts over tp; give a tpN with N > 1")
            kw["etp"] = kw["tp"]
        elif opt == "gpipe":
            kw["schedule"] = "gpipe"
        elif opt == "zb":
            kw["schedule"] = "zero_bubble"
        elif opt in ("full", "selective"):
            kw["recompute"] = opt
        else:
            if not sharded:
                raise LayoutSyntaxError(f"+{opt} needs sharded data parallelism (fsdpN)")
            kw["zero"] = int(opt[-1])
    return Layout(**kw)


def parse_layouts(text: str) -> list[Layout]:
    layouts = [parse_layout(t) for t in text.split(",") if t.strip()]
    if not layouts:
        raise LayoutSyntaxError("--layouts is empty; e.g. --layouts dp2,tp2,pp2")
    return layouts


def check_tolerance(tolerance: float) -> float:
    """A relative tolerance is a finite number > 0 (NaN would pass every comparison)."""
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance > 0):
        raise LayoutSyntaxError(f"--tolerance {tolerance}: give a finite relative difference > 0, e.g. 1e-4")
    return float(tolerance)


def why_not_applicable(exp: Experiment, layout: Layout) -> list[str]:
    """Why `layout` cannot split this model (empty when it can), checked before anything runs."""
    b, moe, reasons = exp.backbone, exp.moe, []
    if b.heads % layout.tp:
        reasons.append(f"tp{layout.tp} does not divide backbone.heads = {b.heads}")
    kv = getattr(b, "kv_heads", None) or b.heads
    if layout.tp > 1 and kv % layout.tp and layout.tp % kv:
        reasons.append(f"tp{layout.tp} and backbone.kv_heads = {kv}: neither divides the other")
    if layout.pp * layout.virtual_stages > b.layers:
        reasons.append(f"pp{layout.pp} x {layout.virtual_stages} stage(s) per rank is more stages than "
                       f"backbone.layers = {b.layers}")
    if layout.ep > 1 and moe is None:
        reasons.append(f"ep{layout.ep} needs a mixture of experts; the spec has no moe section")
    elif layout.ep > 1 and moe.experts % layout.ep:
        reasons.append(f"ep{layout.ep} does not divide moe.experts = {moe.experts}")
    # expert parallelism folds over the ranks holding distinct tokens: dp, and with whole experts
    # (etp = 1) cp and tp under sequence parallelism (vlac.compiler.moe_routing)
    ranks = ep_fold_ranks(layout.etp, layout.dp, layout.tp, layout.sequence_parallel, layout.cp)
    if layout.ep > 1 and ranks == layout.dp and layout.dp % layout.ep:
        reasons.append(f"ep{layout.ep} is folded out of data parallelism (experts split by width); dp{layout.dp} "
                       f"is not a multiple of it")
    elif layout.ep > 1 and ranks % layout.ep:
        reasons.append(f"ep{layout.ep} is folded over the dp x cp x tp ranks of the MoE layers; "
                       f"{ranks} is not a multiple of it")
    if layout.etp > 1 and moe is None:
        reasons.append("+etp splits experts; the spec has no moe section")
    return reasons


def check_applicable(exp: Experiment, layouts: Iterable[Layout]) -> None:
    problems = [f"{lay.name}: " + "; ".join(why) for lay in layouts if (why := why_not_applicable(exp, lay))]
    if problems:
        raise LayoutSyntaxError(f"layout(s) that cannot apply to {exp.name}:\n  " + "\n  ".join(problems)
                                + "\nchoose degrees that divide the model (e.g. --layouts dp2,tp2)")


def microbatch_size(exp: Experiment, layouts: Iterable[Layout]) -> int:
    """The largest micro-batch every layout can use: it divides each replica's share of the global
    batch, and leaves at least pp micro-batches (a multiple of pp when interleaved)."""
    g = exp.train.global_batch
    layouts = list(layouts)
    for mb in sorted(MICROBATCH_SIZES, reverse=True):
        ok = True
        for lay in layouts:
            if g % (lay.dp * mb):
                ok = False
                break
            m = g // (lay.dp * mb)
            if m < lay.pp or (lay.virtual_stages > 1 and m % lay.pp):
                ok = False
                break
        if ok:
            return mb
    raise ValueError(f"no micro-batch size in {MICROBATCH_SIZES} suits every layout for a global batch of {g} "
                     f"sequences (train.global_batch_tokens / train.seq_len); change the layouts or the batch")


def verification_spec(spec: str | Path, overrides: Iterable[str] = (), profile: str | None = None) -> tuple[Experiment, str]:
    """The experiment to verify and a note on which: the given profile, else the spec's `tiny`
    profile when the spec is larger than LARGE_PARAMS parameters, else the spec itself."""
    exp = api.load(spec, overrides, profile)
    if profile is not None:
        return exp, f"profile {profile!r}"
    from vlac.runtime.model import build_model

    params = sum(p.numel() for p in build_model(exp, "meta").parameters())
    if params > LARGE_PARAMS and "tiny" in exp.profiles:
        return api.load(spec, overrides, "tiny"), f"profile 'tiny' (the spec has {params / 1e6:,.0f} M parameters)"
    return exp, "the spec as written"


@dataclass
class Run:
    layout: Layout
    world: int
    plan_summary: str = ""
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    def max_rel(self, ref: "Run") -> tuple[float, float]:
        return _max_rel(self.losses, ref.losses), _max_rel(self.grad_norms, ref.grad_norms)


def _max_rel(a: list[float], b: list[float]) -> float:
    """Largest relative difference; a NaN or inf on either side is a difference (inf), never a match."""
    if len(a) != len(b) or not a:
        return math.inf
    if not all(math.isfinite(x) for x in (*a, *b)):
        return math.inf
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def run_layout(exp: Experiment, layout: Layout, mb: int, steps: int, workdir: Path, timeout_s: float = 600.0,
               checkpoints: bool = True) -> Run:
    """Plan, emit and run `layout` on local processes; the losses as rank 0 reports them. The run
    leaves its checkpoints in <workdir>/<layout>/run/checkpoints unless `checkpoints` is False."""
    run = Run(layout, layout.world)
    t0 = time.perf_counter()
    try:
        cluster = Cluster.model_validate({"preset": exp.cluster.preset, "nodes": 1, "gpus_per_node": layout.world})
        plan = api.plan(exp, cluster=cluster, pin=layout.pins(mb))
        run.plan_summary = plan.chosen.layout.short()
        program = api.emit(exp, plan, workdir / layout.name / "program")
        job = api.submit(program, executor="local", folder=workdir / layout.name / "submitit", max_steps=steps,
                         out_dir=workdir / layout.name / "run", checkpoints=checkpoints)
        results = _results(job, timeout_s)
        run.losses, run.grad_norms = results[0]["losses"], results[0]["grad_norms"]
        for r in results[1:]:
            if r["losses"] != run.losses:
                run.error = f"rank {r['rank']} reports other losses than rank 0"
    except Exception as e:  # a failed layout is a result of the verification, not a crash of it
        run.error = f"{type(e).__name__}: {e}".strip()
    run.seconds = time.perf_counter() - t0
    return run


def _results(job, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            raise TimeoutError(f"no result after {timeout_s:.0f} s (logs: {job.paths.stderr})")
        time.sleep(0.2)
    return job.results()


@dataclass
class Report:
    spec_note: str
    microbatch_size: int
    steps: int
    tolerance: float
    reference: Run
    runs: list[Run]

    def passed(self, run: Run) -> bool:
        if run.error or self.reference.error:
            return False
        dl, dg = run.max_rel(self.reference)  # inf when either side went NaN/inf
        return dl <= self.tolerance and dg <= self.tolerance

    @property
    def ok(self) -> bool:
        return all(self.passed(r) for r in self.runs)


def verify(exp: Experiment, layouts: list[Layout], steps: int = 10, tolerance: float = TOLERANCE,
           workdir: Path | None = None, spec_note: str = "", on_run=None) -> Report:
    """Run the reference and every layout; `on_run(run)` is called as each finishes."""
    mb = microbatch_size(exp, [SINGLE, *layouts])
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="vlac-verify-")) if own else Path(workdir)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the children inherit it: no oversubscription, fewer reorderings
    try:
        # in a folder of its own, deleted below, nobody reads the runs' checkpoints: none is written
        # (the DCP save and its manifest, ~0.3 CPU s per two-rank run); a caller's workdir keeps them
        reference = run_layout(exp, SINGLE, mb, steps, workdir, checkpoints=not own)
        if on_run:
            on_run(reference)
        runs = []
        for lay in layouts:
            runs.append(run_layout(exp, lay, mb, steps, workdir, checkpoints=not own))
            if on_run:
                on_run(runs[-1])
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    return Report(spec_note, mb, steps, tolerance, reference, runs)


# ---- command line -------------------------------------------------------------------------------
def print_report(con, report: Report) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"vlac verify: {report.steps} steps, micro-batch {report.microbatch_size}, "
                    f"{report.spec_note}; tolerance {report.tolerance:g} relative")
    for col in ("layout", "ranks", "plan", "max rel. diff loss", "max rel. diff |g|", "time", "result"):
        t.add_column(col, justify="right" if col.startswith(("max", "time", "ranks")) else "left")
    ref = report.reference
    t.add_row("single process", "1", ref.plan_summary, "reference", "reference", f"{ref.seconds:.1f} s",
              "[red]failed[/]" if ref.error else "[green]ok[/]")
    for run in report.runs:
        dl, dg = run.max_rel(ref)
        if run.error:
            verdict = "[red]failed[/]"
        else:
            verdict = "[green]pass[/]" if report.passed(run) else "[red]FAIL[/]"
        t.add_row(run.layout.name, str(run.world), run.plan_summary, f"{dl:.2e}", f"{dg:.2e}", f"{run.seconds:.1f} s",
                  verdict)
    con.print(t)
    for run in [ref, *report.runs]:
        if run.error:
            con.print(f"[red]{run.layout.name}:[/] {escape(run.error)}", highlight=False, soft_wrap=True)


def command(spec: Path, layouts: str = DEFAULT_LAYOUTS, steps: int = 10, tolerance: float = TOLERANCE,
            sets: Iterable[str] = (), profile: str | None = None, workdir: Path | None = None) -> int:
    """Exit code: 0 every layout within tolerance, 1 one is not (or failed), 2 bad input."""
    from rich.console import Console
    from rich.markup import escape

    from vlac.spec import SpecError

    out, err = Console(), Console(stderr=True)
    try:
        chosen = parse_layouts(layouts)
        if steps < 1:
            raise LayoutSyntaxError(f"--steps {steps}: run at least one step")
        tolerance = check_tolerance(tolerance)
        exp, note = verification_spec(spec, sets, profile)
        check_applicable(exp, chosen)
        mb = microbatch_size(exp, [SINGLE, *chosen])
    except (SpecError, ValueError, FileNotFoundError) as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    out.print(f"verifying {exp.name} ({note}): {len(chosen)} layout(s) x {steps} steps, micro-batch {mb}, "
              f"against one process", highlight=False)
    report = verify(exp, chosen, steps, tolerance, workdir, note,
                    on_run=lambda r: out.print(f"  {r.layout.name}: {'failed' if r.error else 'done'} "
                                               f"in {r.seconds:.1f} s", highlight=False))
    print_report(out, report)
    return 0 if report.ok else 1
