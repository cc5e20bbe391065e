"""`vlac export RUN_DIR --hf OUT`: the command, registered in vlac/cli.py.

RUN_DIR is an emitted program folder (experiment.yaml beside run/checkpoints/), its run folder, or
any folder with checkpoints/ whose experiment is given with --spec. The latest complete checkpoint
is exported unless --step names one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

EXPERIMENT_FILE, CHECKPOINTS = "experiment.yaml", "checkpoints"


def find_run(run_dir: Path, spec: Optional[Path]) -> tuple[Path, Path]:
    """(experiment file, checkpoints folder) of a run folder."""
    from .cli import UsageFailure

    if not os.path.isdir(run_dir):  # never raises: Path.is_dir() does on a name too long for the system
        raise UsageFailure(f"RUN_DIR {run_dir} is not a folder; give the folder vlac emit wrote (or its run/)")
    ckpts = next((d for d in (run_dir / CHECKPOINTS, run_dir / "run" / CHECKPOINTS) if d.is_dir()), None)
    if ckpts is None:
        raise UsageFailure(f"no checkpoints/ under {run_dir} or {run_dir / 'run'}; has the run saved a checkpoint?")
    found = spec or next((f for f in (run_dir / EXPERIMENT_FILE, run_dir.parent / EXPERIMENT_FILE) if f.is_file()), None)
    if found is None:
        raise UsageFailure(f"no {EXPERIMENT_FILE} in {run_dir} or its parent; pass --spec SPEC")
    return found, ckpts


def export_command(
        run_dir: Path = typer.Argument(..., help="run folder: the program vlac emit wrote, or its run/ folder"),
        hf: Path = typer.Option(..., "--hf", help="output folder of the Hugging Face checkpoint"),
        step: Optional[int] = typer.Option(None, help="export this step's checkpoint (default: the latest complete one)"),
        spec: Optional[Path] = typer.Option(None, help="the run's experiment, when RUN_DIR has no experiment.yaml"),
        dtype: Optional[str] = typer.Option(None, help="cast the weights: fp32, bf16 or fp16 (default: as saved)"),
        max_shard_gb: float = typer.Option(5.0, help="largest safetensors file (GB); bigger models get shards + index"),
) -> None:
    """Write a trained run's backbone (and the rest of its modules) as a Hugging Face checkpoint,
    with the starting checkpoint's tokenizer files and a model card; a pretrained vision tower
    (`modalities.<m>.encoder`) goes to OUT/vision_tower as a CLIP/SigLIP vision model."""
    from vlac.spec import load

    from .cli import UsageFailure, _run, out

    def go():
        from vlac.runtime.checkpoint import Checkpointer
        from vlac.runtime.hf.export import export

        exp_file, ckpts = find_run(run_dir, spec)
        exp = load(exp_file)
        checkpointer = Checkpointer(ckpts, keep_last=1, is_main=False)
        done = checkpointer.complete()
        if not done:
            raise UsageFailure(f"no complete checkpoint in {ckpts}")
        chosen = done[-1] if step is None else next((d for d in done if d.name.endswith(f"{step:08d}")), None)
        if chosen is None:
            raise UsageFailure(f"--step {step}: no complete checkpoint of that step; have {[d.name for d in done]}")
        result = export(exp, chosen, hf, dtype, int(max_shard_gb * 2**30))
        out.print(f"exported {chosen} as a {result['family']} checkpoint to {hf}: {', '.join(result['files'])}"
                  + (f"; copied {', '.join(result['copied'])}" if result["copied"] else "")
                  + "".join(f"; {name}'s vision tower in {hf / folder}" for name, folder in result["vision_towers"].items()),
                  highlight=False, markup=False)  # paths as written: "[/x]" is not markup
    _run(go)


__all__ = ["export_command", "find_run"]
