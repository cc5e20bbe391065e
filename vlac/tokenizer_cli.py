"""`vlac tokenizer train SPEC --modality NAME`: fit a modality's tokenizer on the spec's data and
save it in a folder its `path` field can point to (format: vlac/data/tokenizers/__init__.py).

Nothing here imports torch at module level: `vlac --help` lists this group without it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

tokenizer_app = typer.Typer(no_args_is_help=True, add_completion=False,
                            help="Train tokenizers on the spec's data (BPE for text, EMA VQ for images/video).")


class _Progress:
    """A rich progress bar on a terminal; a plain line every tenth of the run otherwise."""

    def __init__(self, steps: int):
        self.steps, self.bar = steps, None

    def _start(self) -> None:  # at the first step: reading the images comes before it
        from rich.progress import BarColumn, Progress, TextColumn

        self.bar = Progress(TextColumn("VQ"), BarColumn(), TextColumn("{task.completed}/{task.total} {task.fields[line]}"),
                            transient=False)
        self.task = self.bar.add_task("vq", total=self.steps, line="")
        self.bar.start()

    def __call__(self, p) -> None:
        if self.bar is None and sys.stderr.isatty():
            self._start()
        line = (f"recon mse {p.reconstruction_mse:.4g}  usage {p.usage:.0%}  perplexity {p.perplexity:.1f}"
                + (f"  reseeded {p.reseeded}" if p.reseeded else ""))
        if self.bar is not None:
            self.bar.update(self.task, completed=p.step, line=line)
        elif p.step % max(1, self.steps // 10) == 0 or p.step == self.steps:
            print(f"step {p.step}/{self.steps}  {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@tokenizer_app.command("train")
def train_command(
    spec: Path = typer.Argument(..., help="experiment spec (YAML/JSON)"),
    modality: str = typer.Option(..., "--modality", "-m", help="the modality whose tokenizer to train"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="folder to write (default: tokenizers/MODALITY beside the spec)"),
    steps: int = typer.Option(500, min=1, help="VQ: training steps"),
    batch: int = typer.Option(128, min=1, help="VQ: images per step"),
    lr: float = typer.Option(3e-3, min=0.0, help="VQ: encoder/decoder learning rate (Adam)"),
    decay: float = typer.Option(0.99, min=0.0, max=0.9999, help="VQ: EMA decay of the codebook statistics"),
    reseed_every: int = typer.Option(20, min=0, help="VQ: steps between dead-code re-seeding (0: never)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override a spec field: a.b.c=VALUE (repeatable)"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help="apply a named profile of the spec"),
) -> None:
    """Train a modality's tokenizer on the spec's data and save it for the spec's `path` field."""
    from vlac.cli import _run

    def go():  # through _run: an unexpected error is one message naming the bug, never a traceback
        from vlac.cli import _fail, _load, err, out as console

        exp = _load(spec, set_, profile)  # a SpecError is _run's to report
        if modality not in exp.modalities:
            _fail(f"--modality: {modality!r} is not a modality of {spec}; choose one of {sorted(exp.modalities)}")
        kind = exp.modalities[modality].kind
        if kind not in ("text", "image", "video"):
            _fail(f"--modality {modality}: a {kind} modality has no trainable tokenizer; "
                  f"choose a text, image or video modality: {sorted(n for n, m in exp.modalities.items() if m.kind in ('text', 'image', 'video'))}")
        if kind == "text" and exp.modalities[modality].tokenizer == "byte":
            _fail(f"--modality {modality}: a byte tokenizer has nothing to train; set modalities.{modality}.tokenizer: bpe")
        folder = out or spec.parent / "tokenizers" / modality
        try:  # before training: a folder that cannot be written would waste the training run
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _fail(f"--out {folder}: cannot create the folder: {e.strerror or e}; give a writable folder")
        from vlac.data.records import SourceError
        from vlac.data.tokenizers.train import train_text, train_vq

        try:
            if kind == "text":
                report = train_text(exp, modality, folder)
                console.print(f"BPE of {report['vocab_size']} entries from {report['texts']} texts {report['by_component']}", markup=False)
            else:
                progress = _Progress(steps)
                try:
                    report = train_vq(exp, modality, folder, on_step=progress, steps=steps, batch=batch, lr=lr,
                                      decay=decay, reseed_every=reseed_every)
                finally:
                    progress.close()
                console.print(f"VQ on {report['images']} images {report['by_component']}: reconstruction mse "
                              f"{report['reconstruction_mse']:.4g}, codebook usage {report['usage']:.1%}, perplexity "
                              f"{report['perplexity']:.1f} of {exp.modalities[modality].codebook_size}, "
                              f"{report['reseeded']} codes re-seeded", markup=False)
        except (SourceError, ValueError) as e:
            _fail(str(e))
        except OSError as e:  # the folder became unwritable (full disk, permissions) while training
            _fail(f"--out {folder}: cannot write {e.filename or folder}: {e.strerror or e}; give a writable folder")
        if report["skipped"]:
            err.print(f"skipped unreadable records: {report['skipped']}", markup=False)
        # paths and records are printed as written: a folder named "[/x]" is not rich markup
        console.print(f"wrote {folder}; use it with: modalities.{modality}.path: {folder}", markup=False)

    _run(go)
