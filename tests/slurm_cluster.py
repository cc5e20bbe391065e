"""A localhost Slurm cluster for tests, driven by ``.ci/slurm.sh`` (no pytest dependency).

    from slurm_cluster import LocalSlurm, slurm_unavailable_reason

    with LocalSlurm(state_dir) as cluster:
        os.environ.update(cluster.env)      # SLURM_CONF: sbatch/sacct/scontrol find the cluster
        executor = submitit.SlurmExecutor(folder=...)
        executor.update_parameters(partition=cluster.partition, ...)

``start()`` installs nothing: run ``bash .ci/slurm.sh install`` once beforehand (CI does). It needs
root (or password-less ``sudo -n``): the daemons run with SlurmUser=root and munged as user munge.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / ".ci" / "slurm.sh"

CLIENT_BINARIES = ("sbatch", "srun", "squeue", "sacct", "scontrol", "scancel", "sinfo", "sacctmgr")
DAEMON_BINARIES = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db")
_SBIN_PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))


def _needs_sudo() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() != 0


def slurm_unavailable_reason() -> Optional[str]:
    """Why a local cluster cannot be started here, or None when it can (as far as one can tell
    without starting it)."""
    if not SCRIPT.is_file():
        return f"{SCRIPT} is missing"
    missing = [b for b in CLIENT_BINARIES if shutil.which(b) is None]
    missing += [b for b in DAEMON_BINARIES if shutil.which(b, path=_SBIN_PATH) is None]
    if missing:
        return (
            f"Slurm is not installed (missing: {', '.join(missing)}); "
            f"run `bash {SCRIPT.relative_to(REPO_ROOT)} install` (Debian/Ubuntu, root)"
        )
    if _needs_sudo():
        if shutil.which("sudo") is None:
            return "starting the local Slurm daemons needs root (or password-less sudo)"
        probe = subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=30)
        if probe.returncode != 0:
            return "starting the local Slurm daemons needs root (or password-less sudo)"
    return None


def slurm_available() -> bool:
    """sbatch and the daemons are installed, and we may start them."""
    return slurm_unavailable_reason() is None


class LocalSlurmError(RuntimeError):
    pass


class LocalSlurm:
    """Starts/stops the single-node cluster of ``.ci/slurm.sh`` in ``state_dir``.

    ``env`` holds the variables a client needs (``SLURM_CONF``) once started; ``partition`` is
    the default partition. ``state_dir`` defaults to a fresh temporary directory, removed by
    ``stop()``; a given ``state_dir`` is kept (its ``log/`` holds every daemon's log). Use a fresh
    submitit folder per start: job ids restart at 1 in a fresh ``state_dir``.
    """

    partition = "debug"
    cluster_name = "vlac"

    def __init__(self, state_dir: Optional[os.PathLike] = None, start_timeout_s: float = 120.0):
        self._own_state = state_dir is None
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.start_timeout_s = start_timeout_s
        self.env: dict[str, str] = {}
        self.started = False

    # ------------------------------------------------------------------------------ internals
    def _run(self, action: str, timeout: float) -> subprocess.CompletedProcess:
        assert self.state_dir is not None
        cmd = ["bash", str(SCRIPT), action, str(self.state_dir)]
        if _needs_sudo():
            # sudo resets the environment: pass the script's knobs (ports, CPUs, timeout) along.
            knobs = [f"{k}={v}" for k, v in os.environ.items() if k.startswith("VLAC_SLURM_")]
            cmd = ["sudo", "-n", "env", *knobs] + cmd
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise LocalSlurmError(
                f"`{' '.join(cmd)}` did not finish in {timeout:.0f}s\n{self.logs_tail()}"
            ) from exc

    def logs_tail(self, lines: int = 15) -> str:
        """The last lines of every daemon log, for failure messages."""
        if self.state_dir is None or not (self.state_dir / "log").is_dir():
            return ""
        out = []
        for log in sorted((self.state_dir / "log").glob("*.log")):
            try:
                tail = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {log}\n" + "\n".join(tail))
        return "\n".join(out)

    # ------------------------------------------------------------------------------ public API
    def start(self) -> "LocalSlurm":
        if self.started:
            return self
        if self.state_dir is None:
            self.state_dir = Path(tempfile.mkdtemp(prefix="vlac-slurm-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        proc = self._run("start", self.start_timeout_s)
        if proc.returncode != 0:
            raise LocalSlurmError(
                f".ci/slurm.sh start failed (rc={proc.returncode}):\n{proc.stderr}\n{self.logs_tail()}"
            )
        env = {}
        for line in proc.stdout.splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export ") :].partition("=")
                env[key.strip()] = value.strip()
        if "SLURM_CONF" not in env:
            raise LocalSlurmError(f"no SLURM_CONF in the output of .ci/slurm.sh start:\n{proc.stdout}")
        self.env = env
        self.started = True
        return self

    def stop(self) -> None:
        """Stops every daemon ``start`` started (safe to call after a failed or no start)."""
        if self.state_dir is None or not self.state_dir.exists():
            return
        proc = self._run("stop", 120)
        self.started = False
        if proc.returncode != 0:
            raise LocalSlurmError(f".ci/slurm.sh stop failed (rc={proc.returncode}):\n{proc.stderr}")
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def status(self) -> str:
        return self._run("status", 60).stdout

    def __enter__(self) -> "LocalSlurm":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- preemption, the way Slurm does it, without the races seen here ----------------------------
def preempt(job, timeout_s: float = 30.0, report=lambda: "") -> None:
    """What `job._interrupt()` does (submitit's preemption: SIGTERM, then USR2 to the job's tasks),
    minus its race: `_interrupt()` sends both back to back, Slurm delivers them asynchronously, and
    when USR2 lands first the SIGTERM kills the `scontrol requeue` that submitit's USR2 handler is
    running (seen here: "Command '['scontrol', 'requeue', '1']' died with SIGTERM", job FAILED).
    So wait until submitit logged the SIGTERM before sending USR2."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    subprocess.run(["scancel", "--signal=TERM", job.job_id], check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout_s
    while "Bypassing signal SIGTERM" not in (job.stderr() or ""):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job.job_id} never logged the SIGTERM\n{report()}")
        time.sleep(0.2)
    subprocess.run(["scancel", f"--signal={SlurmJobEnvironment.USR_SIG}", job.job_id], check=True, capture_output=True,
                   timeout=30)


def release_requeued(job_id: str) -> None:
    """Let a requeued job start in 2 s instead of 120 s. Not `StartTime=now`: slurmd refuses to
    launch a job whose credential was revoked (at the requeue) in the same second ("Job N already
    killed, do not launch batch job") and the job then FAILS; 2 s later is safe. The cluster
    schedules every 1-2 s (SchedulerParameters in .ci/slurm.sh), so it starts right after."""
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now+2"], capture_output=True, timeout=30)
