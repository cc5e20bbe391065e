"""Checkpoints carry a manifest of sha256 checksums: a truncated or byte-flipped latest checkpoint
is reported by path and the run resumes from the newest good one, with that one's weights."""

import json

import pytest
import torch
import torch.nn as nn

from vlac.runtime.checkpoint import MANIFEST, Checkpointer, CorruptCheckpoint, verify_manifest

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _model_and_opt(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train_step(model, opt):
    loss = model(torch.randn(3, 8)).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()


@pytest.fixture
def two_checkpoints(tmp_path):
    """Checkpoints at steps 1 and 2 with different weights; returns (checkpointer, {step: weights})."""
    ck = Checkpointer(tmp_path / "checkpoints", keep_last=3, is_main=True)
    model, opt = _model_and_opt(0)
    weights = {}
    for step in (1, 2):
        _train_step(model, opt)
        ck.save(step, model, opt, {"note": "test"})
        weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(weights[1]["0.weight"], weights[2]["0.weight"])
    return ck, weights


def _largest_data_file(path):
    return max((p for p in path.iterdir() if p.name not in (MANIFEST, "extra.json")), key=lambda p: p.stat().st_size)


def _resume(ck):
    model, opt = _model_and_opt(1)  # other weights than either checkpoint
    latest = ck.latest()
    extra = ck.load(latest, model, opt)
    return latest, extra, model.state_dict()


def test_every_checkpoint_has_a_manifest_that_verifies(two_checkpoints):
    ck, _ = two_checkpoints
    for path in ck.complete():
        files = json.loads((path / MANIFEST).read_text())["files"]
        assert "extra.json" in files and len(files) >= 2
        verify_manifest(path)


@pytest.mark.parametrize("fault", ["truncate", "flip"])
def test_corrupt_latest_is_named_and_the_run_resumes_from_the_previous(two_checkpoints, capsys, fault):
    ck, weights = two_checkpoints
    newest = ck.complete()[-1]
    victim = _largest_data_file(newest)
    data = bytearray(victim.read_bytes())
    if fault == "truncate":
        victim.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match=str(newest)):
        verify_manifest(newest)
    latest, extra, state = _resume(ck)
    err = capsys.readouterr().err
    assert str(newest) in err and victim.name in err
    assert latest.name == "step_00000001" and extra["step"] == 1
    for key, value in weights[1].items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_loading_a_corrupt_checkpoint_directly_is_refused(two_checkpoints):
    ck, _ = two_checkpoints
    newest = ck.complete()[-1]
    (newest / MANIFEST).write_text("{not json")
    model, opt = _model_and_opt(1)
    with pytest.raises(CorruptCheckpoint, match="manifest"):
        ck.load(newest, model, opt)


def test_untouched_checkpoints_resume_from_the_newest(two_checkpoints):
    ck, weights = two_checkpoints
    latest, extra, state = _resume(ck)
    assert extra["step"] == 2
    torch.testing.assert_close(state["0.weight"], weights[2]["0.weight"], rtol=0, atol=0)


def test_no_good_checkpoint_means_a_fresh_start(two_checkpoints):
    ck, _ = two_checkpoints
    for path in ck.complete():
        (path / MANIFEST).unlink()
    assert ck.latest() is None
