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


def _write_beat(folder: Path, rank: int, step: int) -> None:
    path = folder / f"rank_{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rank": rank, "step": step, "time": time.time()}))
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


def stalled_ranks(beats: dict[int, dict], world: int) -> tuple[list[int], int]:
    """(ranks at the lowest step, that step); ranks with no beat at all count as step -1."""
    steps = {r: int(beats[r]["step"]) if r in beats else -1 for r in range(world)}
    low = min(steps.values())
    return [r for r, s in sorted(steps.items()) if s == low], low


def stall_message(rank: int, world: int, stall_s: float, beats: dict[int, dict]) -> str:
    behind, step = stalled_ranks(beats, world)
    mine = int(beats[rank]["step"]) if rank in beats else -1
    who = ", ".join(map(str, behind))
    where = "never finished a step" if step < 0 else f"stopped at step {step}"
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
        self.on_stall = on_stall or _end_process
        self.poll_s = poll_s if poll_s is not None else min(10.0, self.stall_s / 4)
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"vlac-watchdog-rank{rank}", daemon=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fired: str | None = None

    def start(self) -> "Watchdog":
        _write_beat(self.folder, self.rank, -1)
        self._last = time.monotonic()
        self._thread.start()
        return self

    def tick(self, step: int) -> None:
        self._last = time.monotonic()
        _write_beat(self.folder, self.rank, step)

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
                self.on_stall(self.fired)
                return


def _end_process(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(STALL_EXIT_CODE)
