"""Several multi-process cases in one spawn of gloo ranks.

Starting the processes (Python, torch, vlac's runtime) costs seconds of CPU per rank, far more
than a tiny case, so a test module with several cases spawns its ranks once and runs every case
in the same process group, one after the other:

    results = spawn_cases(_case, {"tp2": (spec, pins), ...}, nprocs=2, out=tmp / "results.json")

`_case(rank, *args)` is a module-level function (the ranks import it by name); it may return a
JSON-able value, and rank 0's values come back per case name. A case that crashes is named in
the failure, with the cases done before it.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, case_fn: Callable, cases: dict[str, tuple], world: int, out: str) -> None:
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results: dict[str, Any] = {}
        for name, args in cases.items():
            result = case_fn(rank, *args)
            torch.distributed.barrier()  # every rank finished this case before the next one starts
            if rank == 0:
                results[name] = result
                Path(out).write_text(json.dumps(results))  # as each case ends: a crash names the next
    finally:
        torch.distributed.destroy_process_group()


def spawn_cases(case_fn: Callable, cases: dict[str, tuple], nprocs: int, out: Path) -> dict[str, Any]:
    """Run `case_fn(rank, *args)` for every case on `nprocs` gloo ranks of one spawn; rank 0's
    return value per case name."""
    import torch.multiprocessing as mp

    out.unlink(missing_ok=True)  # what an earlier spawn wrote would name the wrong case
    try:
        mp.spawn(_worker, args=(free_port(), case_fn, cases, nprocs, str(out)), nprocs=nprocs)
    except Exception as e:
        done = list(json.loads(out.read_text())) if out.exists() else []
        crashed = next((name for name in cases if name not in done), "none (after the last case)")
        raise AssertionError(f"case {crashed} crashed on a rank (cases done before it: {done})") from e
    return json.loads(out.read_text())
