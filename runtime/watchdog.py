"""A watchdog thread per rank: the trainer ticks it once per step; when no tick comes for
`stall_s` seconds it names the rank that stopped making progress and ends the process with a clear
message, instead of the job hanging in a collective until Slurm's time limit.

Each rank writes its last step and time to `folder/rank_R.json` (atomic rename) on every tick, so
the rank whose watchdog fires can tell a peer that stopped (the lowest last step, usually) from
itself waiting for that peer inside a collective. No collective is used: they are what hangs.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

STALL_EXIT_CODE = 3  # distinct from a crash (1) and a usage error (2)
HEARTBEAT_DIR = "heartbeats"  # in the run folder, beside metrics.jsonl
STALL_FILE = "stalled.txt"  # the first rank whose watchdog fires writes its message here


def _write_beat(folder: Path, rank: int, step: int, busy: bool = False) -> None:
    path = folder / f"rank_{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rank": rank, "step": step, "busy": busy, "time": time.time()}))
    os.replace(tmp, path)


def read_beats(folder: Path) -> dict[int, dict]:
    beats = {}
    for p in sorted(Path(folder).glob("rank_*.json")):
        try:
            beat = json.loads(p.read_text())
            beats[int(beat["rank"])] = beat
        except (OSError, ValueError, KeyError):
            continue  # a beat being replaced right now: the next look sees it
    return beats


def _progress(beat: dict | None) -> tuple[int, bool]:
    return (int(beat["step"]), bool(beat.get("busy", False))) if beat else (-1, False)


def stalled_ranks(beats: dict[int, dict], world: int) -> tuple[list[int], int]:
    """(ranks that got least far, their step); ranks with no beat at all count as step -1. At the
    same step, a rank that never entered the next one is behind the ranks inside it (those wait
    for it in the step's first collective)."""
    progress = {r: _progress(beats.get(r)) for r in range(world)}
    low = min(progress.values())
    return [r for r, p in sorted(progress.items()) if p == low], low[0]


def stall_message(rank: int, world: int, stall_s: float, beats: dict[int, dict]) -> str:
    behind, step = stalled_ranks(beats, world)
    mine = int(beats[rank]["step"]) if rank in beats else -1
    who = ", ".join(map(str, behind))
    inside = _progress(beats.get(behind[0]))[1]
    where = "never finished a step" if step < 0 else f"stopped {'inside' if inside else 'at'} step {step}"
    if world > 1 and rank not in behind:
        return (f"vlac watchdog: rank {rank} (at step {mine}) made no progress for {stall_s:.0f} s: it waits for "
                f"rank(s) {who}, which {where}; ending the job instead of hanging")
    return (f"vlac watchdog: rank(s) {who} {where} and made no progress for {stall_s:.0f} s; "
            f"ending the job instead of hanging")


class Watchdog:
    """`tick(step)` after every step; `stop()` at the end. `on_stall(message)` defaults to printing
    the message to stderr and `os._exit(STALL_EXIT_CODE)` (a hung collective never returns)."""

    def __init__(self, folder: str | Path, rank: int, world: int, stall_s: float = 600.0,
                 on_stall: Callable[[str], None] | None = None, poll_s: float | None = None):
        if not stall_s > 0:
            raise ValueError(f"stall_s = {stall_s}: give a number of seconds > 0")
        self.folder, self.rank, self.world, self.stall_s = Path(folder), rank, world, float(stall_s)
        self.on_stall = on_stall or end_process
        self.poll_s = poll_s if poll_s is not None else min(10.0, self.stall_s / 4)
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"vlac-watchdog-rank{rank}", daemon=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fired: str | None = None

    def start(self) -> "Watchdog":
        if self.rank == 0:  # an earlier run's stall is not this run's (no rank can stall this soon)
            (self.folder / STALL_FILE).unlink(missing_ok=True)
        _write_beat(self.folder, self.rank, -1)
        self._last = time.monotonic()
        self._thread.start()
        return self

    def tick(self, step: int, busy: bool = False) -> None:
        """`step` steps are done; `busy`: this rank is entering the next one (its collectives)."""
        self._last = time.monotonic()
        _write_beat(self.folder, self.rank, step, busy)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.poll_s + 1)

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            if time.monotonic() - self._last > self.stall_s:
                self.fired = stall_message(self.rank, self.world, self.stall_s, read_beats(self.folder))
                _record_stall(self.folder, self.fired)
                self.on_stall(self.fired)
                return


class Watched:
    """Wraps a context manager (the trainer's progress display) so that leaving it also stops the
    watchdog: the loop is over, and what follows (summary, teardown) has its own time-outs."""

    def __init__(self, inner, watchdog: Watchdog):
        self.inner, self.watchdog = inner, watchdog

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        self.watchdog.stop()
        return self.inner.__exit__(*exc)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def _record_stall(folder: Path, message: str) -> None:
    """Leave the message where `vlac submit` looks for it (every rank may fire: keep the first)."""
    path = folder / STALL_FILE
    if path.exists():
        return
    try:
        tmp = folder / f".{STALL_FILE}.{os.getpid()}"
        tmp.write_text(message + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # the message still goes to stderr


def stall_report(run_dir: str | Path, since: float = 0.0) -> str | None:
    """The stall message of the run in `run_dir` (the folder holding metrics.jsonl) written at or
    after `since` (time.time() when the job was submitted: an earlier job's stall is not this one's)."""
    path = Path(run_dir) / HEARTBEAT_DIR / STALL_FILE
    try:
        if path.stat().st_mtime < since:
            return None
        return path.read_text().strip() or None
    except OSError:
        return None


def end_process(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(STALL_EXIT_CODE)
