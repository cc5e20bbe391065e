"""The watchdog names the rank that stopped making progress and ends the job instead of hanging;
teardown leaves every process group, in order, even when a peer already left."""

import threading

import pytest
import torch.multiprocessing as mp

from vlac.runtime.watchdog import Watchdog, read_beats, stall_message, stalled_ranks


def _fire(tmp_path, rank, world, ticks):
    fired = threading.Event()
    seen = []
    dog = Watchdog(tmp_path, rank, world, stall_s=0.2, poll_s=0.05,
                   on_stall=lambda m: (seen.append(m), fired.set()))
    with dog:
        for step in ticks:
            dog.tick(step)
        assert fired.wait(timeout=30), "the watchdog never fired"
    return seen[0]


def test_a_stalled_rank_is_named_by_its_peers(tmp_path):
    # rank 1 reached step 7 and went silent; rank 0 is at step 8, waiting for it in a collective
    Watchdog(tmp_path, 1, 2).tick(7)
    message = _fire(tmp_path, 0, 2, [8])
    assert "rank 0 (at step 8)" in message and "waits for rank(s) 1, which stopped at step 7" in message


def test_the_stalled_rank_names_itself(tmp_path):
    Watchdog(tmp_path, 0, 2).tick(5)
    message = _fire(tmp_path, 1, 2, [3])
    assert "rank(s) 1 stopped at step 3" in message


def test_a_rank_with_no_step_never_finished_one(tmp_path):
    beats = {0: {"rank": 0, "step": 4}}
    assert stalled_ranks(beats, 3) == ([1, 2], -1)
    assert "rank(s) 1, 2, which never finished a step" in stall_message(0, 3, 60, beats)
    assert "rank(s) 1, 2 never finished a step" in stall_message(1, 3, 60, beats)


def test_ticking_keeps_it_quiet_and_stop_ends_the_thread(tmp_path):
    calls = []
    dog = Watchdog(tmp_path, 0, 1, stall_s=30, poll_s=0.01, on_stall=calls.append).start()
    for step in range(50):
        dog.tick(step)
    dog.stop()
    assert not dog._thread.is_alive() and calls == [] and read_beats(tmp_path)[0]["step"] == 49


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_stall_must_be_positive(tmp_path, bad):
    with pytest.raises(ValueError, match="stall_s"):
        Watchdog(tmp_path, 0, 1, stall_s=bad)


def _teardown_worker(rank, world, port, peer_leaves, out):
    import os

    import torch.distributed as dist

    from vlac.runtime import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    distributed.setup("cpu")
    sub = dist.new_group([0, 1])  # like a mesh dimension's group
    dist.barrier(group=sub)
    if peer_leaves and rank == 1:
        os._exit(0)  # gone without a word, as a preempted peer
    distributed.teardown(barrier_timeout_s=5)
    (out / f"rank{rank}").write_text(str(dist.is_initialized()))


@pytest.mark.slow
@pytest.mark.parametrize("peer_leaves", [False, True])
def test_teardown_destroys_groups_and_survives_a_missing_peer(tmp_path, peer_leaves):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_teardown_worker, args=(r, 2, port, peer_leaves, tmp_path)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert (tmp_path / "rank0").read_text() == "False"
    if not peer_leaves:
        assert (tmp_path / "rank1").read_text() == "False"


def test_a_rank_that_never_entered_the_step_is_behind_the_ranks_inside_it():
    beats = {0: {"rank": 0, "step": 2, "busy": True}, 1: {"rank": 1, "step": 2, "busy": False}}
    assert stalled_ranks(beats, 2) == ([1], 2)
    assert "waits for rank(s) 1, which stopped at step 2" in stall_message(0, 2, 60, beats)
    beats[1]["busy"] = True  # both inside: a hang in the step itself, nobody to single out
    assert "rank(s) 0, 1 stopped inside step 2" in stall_message(0, 2, 60, beats)


def test_leaving_the_watched_progress_stops_the_watchdog_and_a_stall_is_reported(tmp_path):
    import contextlib

    from vlac.runtime.watchdog import HEARTBEAT_DIR, Watched, stall_report

    dog = Watchdog(tmp_path / HEARTBEAT_DIR, 0, 1, stall_s=30, poll_s=0.01, on_stall=lambda m: None)
    with Watched(contextlib.nullcontext(), dog.start()):
        assert dog._thread.is_alive()
    assert not dog._thread.is_alive() and stall_report(tmp_path) is None
    fired = _fire(tmp_path / HEARTBEAT_DIR, 0, 1, [4])
    assert stall_report(tmp_path) == fired and "rank(s) 0 stopped at step 4" in fired
    assert stall_report(tmp_path, since=float("inf")) is None  # an earlier job's stall
