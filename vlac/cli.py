"""The `vlac` command line: validate, compile, emit, submit, verify, schema.

Exit codes: 0 success; 1 a run that failed (or an internal error); 2 bad spec or bad arguments (a
message, never a traceback); 3 no layout fits in memory (`vlac compile` still prints the closest
plan, marked infeasible in the table, in --json and in --report).

Start-up stays under a second: nothing here imports torch, the spec's pydantic models or the
reports at module level (each command imports what it uses), so `vlac --help` loads only typer,
rich and the plain preset tables (vlac.spec.hardware_presets); tests/vlac/test_cli_startup.py
checks which modules `--help` leaves unimported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from vlac.spec import hardware_presets  # plain tables: the --cluster help lists their presets without pydantic

from .cli_lazy import LazyGroup

if TYPE_CHECKING:
    from vlac.spec import Experiment
    from vlac.spec.system import Cluster

EXIT_INFEASIBLE = 3  # `vlac compile`: no layout fits in memory
# vlac.compiler.planner.PIN_KEYS, written out so that the help text needs no torch import
# (tests/vlac/test_cli_startup.py checks they agree)
PIN_KEYS = ("dp", "tp", "pp", "ep", "cp", "zero", "sequence_parallel", "microbatch_size", "schedule",
            "virtual_stages", "recompute", "etp", "reshard_after_forward")
MAX_PIN_DIGITS = 18  # a pin is a degree or a micro-batch size; 18 digits still fit a 64-bit integer

app = typer.Typer(cls=LazyGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compile multimodal training experiments into planned, runnable distributed programs.",
                  epilog="Exit codes: 0 ok; 1 a run failed; 2 bad spec or arguments; 3 no layout fits in memory "
                         "(vlac compile). Sizes are decimal: GB = 10^9 bytes.")


def _console(stderr: bool = False, **kwargs: Any) -> Console:
    """A console that wraps at the terminal's width on a terminal and never when piped or
    redirected (a table in a file or a pipe keeps its rows whole)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 10_000
    # emoji=False: a name like ":rocket:" in a spec is printed as written
    return Console(stderr=stderr, width=width, emoji=False, **kwargs)


out = _console()
err = _console(stderr=True, highlight=False, soft_wrap=True)  # error text is printed as written, never re-wrapped

SetOpt = typer.Option(None, "--set", "-s", help="override a spec field: a.b.c=VALUE (repeatable)")
ProfileOpt = typer.Option(None, "--profile", "-p", help="apply a named profile of the spec, e.g. tiny")


class UsageFailure(Exception):
    """Bad command-line input: reported like a spec error, exit 2."""


def _fail(message: str, code: int = 2) -> None:
    # messages quote user input (keys, values, paths, a job's output): escape it, or a "[/x]" in
    # it would be read as rich markup and crash the report of the error
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def _load(spec: Path, sets: Optional[List[str]], profile: Optional[str]) -> Experiment:
    from vlac.spec import load as load_spec
    from vlac.spec.data_sources import anchor_paths  # relative data paths are the spec folder's

    return anchor_paths(load_spec(spec, sets or (), profile), spec.parent)


def _parse_pins(text: Optional[str]) -> dict[str, Any]:
    pins: dict[str, Any] = {}
    if not text:
        return pins
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise UsageFailure(f"--pin item {item!r} is not KEY=VALUE; e.g. --pin tp=2,pp=1")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in PIN_KEYS:
            raise UsageFailure(f"--pin: unknown key {key!r}; valid keys: {', '.join(PIN_KEYS)}")
        if value.lower() in ("true", "false"):
            pins[key] = value.lower() == "true"
        elif value.isascii() and value.isdigit():  # str.isdigit alone takes "²", which int() refuses
            if len(value) > MAX_PIN_DIGITS:  # int() refuses 4,300 digits; no degree has 19
                raise UsageFailure(f"--pin {key}: a number of {len(value):,} digits; give a whole number such as "
                                   f"{key}=2")
            pins[key] = int(value)
        else:
            pins[key] = value
    return pins


def _program_folder(out_dir: Path) -> Path:
    """The folder `vlac emit -o` may write (vlac.templates.emit.program_folder_problem: new, empty
    or an earlier program), refused as a usage error naming --out."""
    from vlac.templates.emit import program_folder_problem  # the emitter's rule; imported only by emit/submit

    problem = program_folder_problem(out_dir)
    if problem:
        shown = str(out_dir) or "''"
        raise UsageFailure(f"--out {shown}: {problem}")
    return out_dir


def _cluster(exp: Experiment, value: Optional[str]) -> Cluster | None:
    if not value:
        return None
    from vlac.spec import read_mapping
    from vlac.spec.loader import load_cluster
    from vlac.spec.system import Cluster

    if value in hardware_presets.PRESETS:
        return Cluster.model_validate({"preset": value, "nodes": exp.cluster.nodes,
                                       "gpus_per_node": exp.cluster.gpus_per_node})
    path = Path(value)
    if not os.path.isfile(path):  # never raises: Path.is_file() does on a name too long for the system
        raise UsageFailure(f"--cluster {value!r} is neither a preset ({', '.join(hardware_presets.PRESETS)}) nor a file")
    data = read_mapping(path, "a cluster file is a mapping, e.g. `cluster: {preset: h100-sxm, nodes: 4, gpus_per_node: 8}`")
    return load_cluster(data.get("cluster", data), str(path))


def _run(fn) -> None:
    """Turn every expected failure into a message and exit code 2."""
    from vlac.spec import SpecError

    try:
        fn()
    except (SpecError, UsageFailure, ValueError, FileNotFoundError) as e:  # PlanError is a ValueError
        _fail(str(e))
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except RecursionError:
        _fail("the input nests too deeply to process; simplify the spec", 2)
    except Exception as e:  # a bug in vlac: say so in one message instead of a traceback
        where = _last_frame(e)
        _fail(f"internal error {type(e).__name__}: {e} (at {where}); this is a bug in vlac, please report it "
              f"with the spec and command", 1)


@contextmanager
def _writing(option: str, path: Path):
    """Writing what an option names: a path that cannot be written (a file where a folder is
    wanted, a folder where a file is, no permission, a read-only place) is bad input, exit 2."""
    try:
        yield
    except OSError as e:
        where = e.filename or path
        raise UsageFailure(f"{option} {path}: cannot write {where}: {e.strerror or e}; give a writable "
                           f"{'folder' if option == '--report' else 'file path'}") from None


def _last_frame(e: BaseException) -> str:
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


@app.command()
def validate(spec: Path = typer.Argument(..., help="spec file (.yaml/.toml/.json/.py)"),
             set_: Optional[List[str]] = SetOpt, profile: Optional[str] = ProfileOpt) -> None:
    """Check a spec and say what it describes."""
    def go():
        exp = _load(spec, set_, profile)
        layout = exp.vocab_layout()
        out.print(f"[green]ok[/] {exp.name}: {len(exp.modalities)} modalities, {exp.backbone.layers} layers, "
                  f"vocabulary {layout.size} (padded {layout.padded}), {exp.tokens_per_sample()} tokens per sample, "
                  f"{exp.cluster.world_size} GPUs", highlight=False)
    _run(go)


@app.command(name="compile")
def compile_(spec: Path = typer.Argument(..., help="spec file"),
             json_: bool = typer.Option(False, "--json", help="print one JSON object (the plan contract)"),
             set_: Optional[List[str]] = SetOpt, profile: Optional[str] = ProfileOpt,
             pin: Optional[str] = typer.Option(None, help=f"fix part of the plan, e.g. tp=2,pp=1 (keys: {', '.join(PIN_KEYS)})"),
             cluster: Optional[str] = typer.Option(None, help=f"cluster preset ({', '.join(hardware_presets.PRESETS)}) or a cluster file"),
             graph: bool = typer.Option(False, "--graph", help="also print the per-layer cost table"),
             report: Optional[Path] = typer.Option(None, "--report", help="write pictures of the lowered graph "
                                                   "(graph.html and SVGs) and of the plan (pipeline.svg, memory.svg, "
                                                   "plan.txt) into this directory")) -> None:
    """Lower, analyse and plan a spec; print the plan and its explanation (exit 3 when no layout fits)."""
    status = {"feasible": True}

    def go():
        exp = _load(spec, set_, profile)
        pins = _parse_pins(pin)
        cl = _cluster(exp, cluster)
        from . import api

        g = api.lower(exp)
        p = api.plan(exp, cluster=cl, pin=pins, graph=g)
        status["feasible"] = p.feasible
        from .report import plan_text, print_graph, print_plan

        if report is not None:
            from vlac.compiler.graph_report import write_graph_report
            from vlac.compiler.plan_report import write_plan_pictures
            with _writing("--report", report):
                paths = list(write_graph_report(g, report)) + write_plan_pictures(p, report)
                (report / "plan.txt").write_text(plan_text(p))
            for path in paths + [report / "plan.txt"]:
                err.print(f"wrote {path}", markup=False)
        if json_:
            sys.stdout.write(json.dumps(p.to_json(), indent=2, sort_keys=True) + "\n")
            return
        if graph:
            print_graph(out, g)
        print_plan(out, p)
    _run(go)
    if not status["feasible"]:
        raise typer.Exit(EXIT_INFEASIBLE)


@app.command()
def emit(spec: Path = typer.Argument(..., help="spec file"),
         out_dir: Path = typer.Option(..., "-o", "--out", help="program directory to write"),
         set_: Optional[List[str]] = SetOpt, profile: Optional[str] = ProfileOpt,
         pin: Optional[str] = typer.Option(None, help="fix part of the plan, e.g. tp=1,dp=2")) -> None:
    """Plan a spec and write its runnable program directory."""
    def go():
        exp = _load(spec, set_, profile)
        from . import api

        p = api.plan(exp, pin=_parse_pins(pin))
        d = api.emit(exp, p, _program_folder(out_dir))
        out.print(f"wrote {d} ({p.chosen.layout.short()})", highlight=False, markup=False)  # a path may hold "[/x]"
    _run(go)


@app.command()
def submit(target: Path = typer.Argument(..., help="spec file, or a program directory from `vlac emit`"),
           executor: str = typer.Option("local", help="local | slurm | debug"),
           out_dir: Optional[Path] = typer.Option(None, "-o", "--out", help="where to emit when given a spec (default runs/NAME)"),
           max_steps: Optional[int] = typer.Option(None, help="stop after this many optimiser steps"),
           wait: bool = typer.Option(True, help="follow the job (progress, ETA, step time and memory vs the plan) "
                                    "until it ends and report its losses"),
           set_: Optional[List[str]] = SetOpt, profile: Optional[str] = ProfileOpt) -> None:
    """Submit a program (emitting it first when given a spec) and follow it."""
    status = {"code": 0}

    def go():
        from . import api

        if executor not in api.EXECUTORS:
            raise UsageFailure(f"unknown executor {executor!r}; choose one of: {', '.join(api.EXECUTORS)}")
        if os.path.isdir(target):  # never raises: Path.is_dir() does on a name too long for the system
            program = target
        else:
            exp = _load(target, set_, profile)
            program = api.emit(exp, api.plan(exp), _program_folder(out_dir or Path("runs") / exp.name))
        from vlac.runtime.program import RUN_DIR

        from .follow import follow, size_of

        metrics = Path(program) / RUN_DIR / "metrics.jsonl"
        start_at = size_of(metrics)  # an earlier run's records are not this job's progress
        submitted = time.time()
        job = api.submit(program, executor=executor, max_steps=max_steps)
        out.print(f"submitted {program} as job {job.job_id} ({executor})", highlight=False, markup=False)
        if not wait:
            return
        if executor != "debug":  # the debug executor runs in this process and shows its own progress
            follow(job, metrics, start_at)
        from vlac.runtime.watchdog import STALL_EXIT_CODE, stall_report

        stalled = stall_report(Path(program) / RUN_DIR, since=submitted)  # a rank's watchdog ended the job
        if stalled is not None and job.done():
            err.print(f"[bold red]job {escape(str(job.job_id))} stalled:[/] {escape(stalled)}")
            status["code"] = STALL_EXIT_CODE
            return
        try:
            results = job.results()
        except Exception as e:  # the job failed: show submitit's report, exit 1
            err.print(f"[bold red]job {escape(str(job.job_id))} failed:[/] {escape(str(e))}")
            status["code"] = 1
            return
        losses = results[0]["losses"]
        if losses:
            out.print(f"done: {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}", highlight=False)
        else:
            out.print("done: nothing left to train (already at the last step)")
    _run(go)
    if status["code"]:
        raise typer.Exit(status["code"])


@app.command()
def verify(spec: Path = typer.Argument(..., help="spec file"),
           layouts: str = typer.Option("dp2,fsdp2,tp2,pp2,ep2", help="comma-separated layouts, e.g. dp2,fsdp2,tp2,pp2+v2,ep2,dp2xtp2"),
           steps: int = typer.Option(10, help="optimiser steps per run"),
           tolerance: float = typer.Option(1e-4, help="largest relative difference to the single process"),
           set_: Optional[List[str]] = SetOpt, profile: Optional[str] = ProfileOpt) -> None:
    """Run the spec (its tiny profile when large) under each layout on local CPU processes and compare with one process."""
    def go():
        from .verify import command

        raise typer.Exit(command(spec, layouts, steps, tolerance, set_ or (), profile))
    _run(go)  # an error verify's own checks miss is one line (exit 1 or 2), never a traceback


@app.command()
def schema(output: Optional[Path] = typer.Option(None, "-o", "--out", help="write to a file instead of stdout")) -> None:
    """Print the JSON Schema of the spec (for editor completion)."""
    def go():
        from vlac.spec import Experiment

        text = json.dumps(Experiment.model_json_schema(), indent=2, sort_keys=True) + "\n"
        if output:
            with _writing("--out", output):
                output.write_text(text)
        else:
            sys.stdout.write(text)
    _run(go)


# `vlac search` (vlac/search_cli.py) and `vlac export RUN_DIR --hf OUT` (vlac/export_cli.py) are
# registered lazily: vlac/cli_lazy.py imports them when they run
app.add_typer(__import__("vlac.tokenizer_cli", fromlist=["tokenizer_app"]).tokenizer_app, name="tokenizer")  # no torch at import
app.command("prepare")(__import__("vlac.data_cli", fromlist=["prepare_command"]).prepare_command)  # no torch at import


def main() -> None:
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err.print("interrupted")
        raise SystemExit(130)


__all__ = ["app", "main"]
if __name__ == "__main__":
    main()
