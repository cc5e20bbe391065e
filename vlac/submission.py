"""Sending an emitted program to local processes, Slurm, or the in-process debug executor.

local   one process per planned rank on this machine (gloo on CPU, NCCL on GPUs);
slurm   the spec's nodes, tasks per node = ranks per node (= GPUs per node on a GPU cluster),
        partition / account / qos / time limit from the spec's launcher, requeued on preemption
        or time-out up to launcher.max_requeues times; the rendezvous comes from submitit's job
        environment (runtime/launch.py);
debug   a one-process plan in this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit

from vlac.runtime.launch import SIGNAL_LEAD_S, TrainJob
from vlac.runtime.program import load_program

from .executors import EXECUTORS


def timeout_minutes(seconds: int) -> int:
    """submitit's timeout_min for a launcher.time_limit: whole minutes rounded up (Slurm counts
    minutes), never less than the spec asks (90 s was 1 minute)."""
    return -(-int(seconds) // 60)


def _world(plan: dict[str, Any]) -> int:
    p = plan["plan"]
    return p["dp"] * p["tp"] * p["pp"] * p["cp"]


def submit(program_dir: str | Path, executor: str = "local", *, folder: str | Path | None = None,
           max_steps: int | None = None, out_dir: str | Path | None = None, gpus_per_node: int | None = None,
           timeout_min: int | None = None, checkpoints: bool = True, **slurm_options: Any) -> submitit.Job:
    """Submit the program in `program_dir`. Extra keyword arguments are submitit Slurm parameters
    (e.g. cpus_per_task=1, partition="debug"); `gpus_per_node=0` asks Slurm for no GPU (CPU runs).
    `checkpoints=False`: the run writes no checkpoint unless it is preempted (a run nobody resumes)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    program_dir = Path(program_dir).resolve()
    exp, plan = load_program(program_dir)
    world = _world(plan)
    folder = Path(folder) if folder else program_dir / "submitit"
    timeout = timeout_min or timeout_minutes(exp.launcher.time_limit)
    job_fn = TrainJob(program_dir, max_steps=max_steps, out_dir=out_dir, checkpoints=checkpoints)
    if executor == "debug":
        if world != 1:
            raise ValueError(f"the debug executor runs one process but the plan needs {world}; "
                             f"use executor='local' or re-plan with --pin dp=1")
        ex: submitit.Executor = submitit.DebugExecutor(folder=folder)
    elif executor == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(tasks_per_node=world, nodes=1, timeout_min=timeout)
    else:
        ex = _slurm_executor(exp, world, folder, timeout, gpus_per_node, slurm_options)
    return ex.submit(job_fn)


def _slurm_executor(exp, world: int, folder: Path, timeout: int, gpus_per_node: int | None,
                    options: dict[str, Any]) -> submitit.AutoExecutor:
    from vlac.templates.emit import check_directive  # submitit writes these into #SBATCH lines unquoted

    for field, value in (("name", exp.name), ("launcher.partition", exp.launcher.partition),
                         ("launcher.account", exp.launcher.account), ("launcher.qos", exp.launcher.qos)):
        if value:
            check_directive(value, field)
    nodes = exp.cluster.nodes
    if world % nodes:
        raise ValueError(f"the plan's {world} ranks do not split over cluster.nodes = {nodes}; re-plan for the cluster")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=exp.launcher.max_requeues)
    params: dict[str, Any] = {"nodes": nodes, "tasks_per_node": world // nodes, "timeout_min": timeout,
                              "name": exp.name, "slurm_signal_delay_s": SIGNAL_LEAD_S}
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
    generic = {"cpus_per_task", "mem_gb", "stderr_to_stdout"}
    params.update({k if k in generic or k.startswith("slurm_") else f"slurm_{k}": v for k, v in options.items()})
    ex.update_parameters(**params)
    return ex
