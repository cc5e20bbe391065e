"""Sending an emitted program to local processes, Slurm, or the in-process debug executor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit

from vlac.runtime.launch import TrainJob
from vlac.runtime.program import load_program

EXECUTORS = ("local", "slurm", "debug")


def submit(program_dir: str | Path, executor: str = "local", *, folder: str | Path | None = None,
           max_steps: int | None = None, out_dir: str | Path | None = None, gpus_per_node: int | None = None,
           timeout_min: int | None = None, **slurm_options: Any) -> submitit.Job:
    """Submit the program in `program_dir`. `local` starts one process per planned rank on this
    machine; `slurm` asks for the spec's nodes x GPUs per node; `debug` runs a one-process
    plan in this process. Extra keyword arguments go to submitit's Slurm parameters."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    program_dir = Path(program_dir).resolve()
    exp, plan = load_program(program_dir)
    p = plan["plan"]
    world = p["dp"] * p["tp"] * p["pp"] * p["cp"]
    folder = Path(folder) if folder else program_dir / "submitit"
    timeout = timeout_min or max(1, exp.launcher.time_limit // 60)
    job_fn = TrainJob(program_dir, max_steps=max_steps, out_dir=out_dir)
    if executor == "debug":
        if world != 1:
            raise ValueError(f"the debug executor runs one process but the plan needs {world}; "
                             f"use executor='local' or re-plan with --pin dp=1")
        ex: submitit.Executor = submitit.DebugExecutor(folder=folder)
    elif executor == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(tasks_per_node=world, nodes=1, timeout_min=timeout)
    else:
        nodes = exp.cluster.nodes
        per_node = world // nodes if world % nodes == 0 else None
        if per_node is None:
            raise ValueError(f"the plan's {world} ranks do not split over {nodes} nodes; re-plan for the cluster")
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {"nodes": nodes, "tasks_per_node": per_node, "timeout_min": timeout,
                                  "slurm_max_num_timeout": exp.launcher.max_requeues, "name": exp.name}
        gpus = exp.cluster.gpus_per_node if gpus_per_node is None else gpus_per_node
        if gpus:
            params["gpus_per_node"] = gpus
        if exp.launcher.partition:
            params["slurm_partition"] = exp.launcher.partition
        extra: dict[str, Any] = {}
        if exp.launcher.account:
            extra["account"] = exp.launcher.account
        if exp.launcher.qos:
            extra["qos"] = exp.launcher.qos
        if extra:
            params["slurm_additional_parameters"] = extra
        params.update({k if k.startswith("slurm_") else f"slurm_{k}": v for k, v in slurm_options.items()})
        ex.update_parameters(**params)
    return ex.submit(job_fn)
