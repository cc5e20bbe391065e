"""`vlac prepare SPEC`: tokenize every source of the spec's mixture once into indexed token shards
(vlac/data/prepare.py), in parallel worker processes with a progress bar; a re-run skips finished
shards. Ends with the tokens per source and per modality, and the samples skipped.

Nothing here imports torch at module level: `vlac --help` lists this command without it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer


class _ShardProgress:
    """A rich progress bar over the shards to write on a terminal; a plain line per tenth otherwise."""

    def __init__(self):
        self.bar, self.total, self.done, self.tokens = None, 0, 0, 0

    def start(self, total: int) -> None:
        self.total = total
        if total and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[line]}"),
                                TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.bar.add_task("prepare", total=total, line="")
            self.bar.start()

    def __call__(self, stats: dict) -> None:
        self.done += 1
        self.tokens += stats["tokens"]
        line = f"{self.tokens:,} tokens  ({stats['component']})"
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, line=line)
        elif self.done % max(1, self.total // 10) == 0 or self.done == self.total:
            print(f"shard {self.done}/{self.total}  {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def report_table(report) -> "rich.table.Table":  # noqa: F821
    """Documents, tokens per modality and skipped samples of every prepared source, and the total."""
    from rich.markup import escape
    from rich.table import Table

    modalities = sorted({m for c in report.components.values() for m in c["tokens_per_modality"]})
    table = Table("source", "shards", "documents", "tokens", *modalities, "skipped")
    for name, c in report.components.items():
        skipped = ", ".join(f"{n} {why}" for why, n in c["skipped"].items()) or "0"
        table.add_row(escape(name), str(c["shards"]), f"{c['documents']:,}", f"{c['tokens']:,}",
                      *(f"{c['tokens_per_modality'].get(m, 0):,}" for m in modalities), skipped)
    totals = report.totals()
    table.add_row("total", str(sum(c["shards"] for c in report.components.values())),
                  f"{sum(c['documents'] for c in report.components.values()):,}", f"{sum(totals.values()):,}",
                  *(f"{totals.get(m, 0):,}" for m in modalities),
                  str(sum(sum(c["skipped"].values()) for c in report.components.values())))
    return table


def prepare_command(
    spec: Path = typer.Argument(..., help="experiment spec (YAML/JSON) whose data.mixture has sources"),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", min=1, help="worker processes (default: the CPU count)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override a spec field: a.b.c=VALUE (repeatable)"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="apply a named profile of the spec"),
) -> None:
    """Tokenize the spec's data sources once into token shards (data.prepared); a re-run skips finished shards."""
    from vlac.cli import _run

    def go():  # through _run: an unexpected error is one message naming the bug, never a traceback
        from vlac.cli import _fail, _load, err, out as console

        exp = _load(spec, set_, profile)  # a SpecError is _run's to report
        raw = [i for i, c in enumerate(exp.data.mixture) if c.source is not None and c.source.kind != "tokens"]
        if not raw:
            _fail(f"data.mixture: no component of {spec} reads a raw source (webdataset, lerobot or table), so there is "
                  f"nothing to prepare; add e.g. source: {{kind: webdataset, pattern: shards/{{0000..0009}}.tar, "
                  f"fields: {{image: jpg, text: txt}}}} to a component")
        from vlac.data.documents import BadSample
        from vlac.data.prepare import prepare
        from vlac.data.records import SourceError

        progress = _ShardProgress()
        try:
            report = prepare(exp, workers=workers, on_unit=progress, start=progress.start)
        except (SourceError, BadSample) as e:
            _fail(str(e))
        except OSError as e:  # the prepared folder: read-only, full, or a file where a folder should be
            _fail(f"data.prepared: cannot write {e.filename or exp.data.prepared} ({e.strerror or e}); point data.prepared "
                  f"at a writable folder with room for the shards")
        finally:
            progress.close()
        console.print(report_table(report))
        console.print(f"wrote {report.written} shards, {report.skipped_shards} already finished; in {exp.data.prepared}",
                      markup=False)  # a path as written: "[/x]" is not markup
        skipped = {n: c["skipped"] for n, c in report.components.items() if c["skipped"]}
        for name, counts in skipped.items():
            examples = report.components[name]["skipped_examples"]
            err.print(f"{name}: skipped {sum(counts.values())} samples ({counts}), e.g. {examples[0]}" if examples else
                      f"{name}: skipped {sum(counts.values())} samples ({counts})", markup=False)

    _run(go)
