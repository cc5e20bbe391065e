"""`vlac verify` of the pipeline features (gloo, fp32, 1e-4 relative against one process): the
zero-bubble schedule, tied embeddings across the first and last stage (with tensor parallelism
too), masked and flow-matching losses (their corruption made on the first stage, scored on the
last); and a tied-embedding checkpoint written by a pipeline resumed on one process."""

import os
from pathlib import Path

import pytest

import vlac
from vlac.spec.system import Cluster
from vlac.verify import parse_layout

from verify_helpers import verify_passes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TINY = EXAMPLES / "tiny_vla.yaml"

pytestmark = pytest.mark.slow


def verify(spec: Path, layouts: str, steps: int, sets: list[str], monkeypatch) -> None:
    verify_passes(spec, layouts, steps, monkeypatch, *sets, plan_pattern=r"\bpp[24]\b")


FOUR_LAYERS = ["--set", "backbone.layers=4"]
TIED = ["--set", "backbone.tied_embeddings=true"]


@pytest.mark.parametrize("spec, layouts, sets", [
    # pp4 makes 4 micro-batches per step: deferred weight-gradient passes really are deferred
    (TINY, "pp2+zb,pp4+zb,dp2xpp2+zb,fsdp2xpp2+zb+zero2,pp2+zb+full", FOUR_LAYERS),
    # under tp both copies are vocabulary-sharded: each tp rank sums its rows with the other stage's
    (TINY, "pp2,pp4,fsdp2xpp2,dp2xpp2,pp2+v2,pp2+zb,tp2xpp2", FOUR_LAYERS + TIED),
    # corrupted inputs: masked tokens (Show-o) and flow-matching noise (Transfusion) are
    # counter-based (vlac.runtime.noise), so the first stage's corruption is the last stage's
    (EXAMPLES / "show_o.yaml", "pp2,dp2xpp2", []),
    (EXAMPLES / "transfusion.yaml", "pp2,fsdp2xpp2", []),
    # late fusion: the media entries travel with the hidden state; CoCa's last stage pools them for
    # the contrastive loss; Flamingo's 4 stages leave rank 1 only frozen blocks (an empty update)
    (EXAMPLES / "coca.yaml", "tp2xpp2", ["--profile", "tiny"]),
    (EXAMPLES / "flamingo.yaml", "pp2+v2", ["--profile", "tiny"]),
], ids=["zero-bubble", "tied-embeddings", "masked-tokens", "flow-matching", "late-contrastive", "late-frozen-rank"])
def test_pipeline_layouts_reproduce_the_single_process_run(spec, layouts, sets, monkeypatch):
    verify(spec, layouts, 5 if spec == TINY else 3, sets, monkeypatch)


def _program(tmp: Path, name: str, layout: str, spec: Path = TINY, sets: tuple[str, ...] = (),
             profile: str | None = None, microbatch_size: int = 4) -> Path:
    exp = vlac.load(spec, sets, profile)
    lay = parse_layout(layout)
    cluster = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": lay.world})
    return vlac.emit(exp, vlac.plan(exp, cluster=cluster, pin=lay.pins(microbatch_size)), tmp / name)


@pytest.fixture(scope="module")
def alone_losses(tmp_path_factory):
    """losses(steps, **program): one process's losses over `steps` steps of the program, run once
    per module (both tied-checkpoint cases compare with the same 10-step run)."""
    runs: dict[str, list[float]] = {}

    def losses(steps: int, **program) -> list[float]:
        key = repr((steps, sorted(program.items())))
        if key not in runs:
            tmp = tmp_path_factory.mktemp("alone")
            runs[key] = vlac.submit(_program(tmp, "alone", "dp1", **program), executor="local", folder=tmp / "s0",
                                    out_dir=tmp / "run0", max_steps=steps).results()[0]["losses"]
        return runs[key]

    return losses


def _resumed_losses(tmp: Path, alone_losses, first_layout: str, then_layout: str, steps: int,
                    **program) -> tuple[list, list]:
    """Losses of 2 x `steps` steps in one process, and of `steps` under one layout followed by
    `steps` more under the other from its checkpoint."""
    os.environ["OMP_NUM_THREADS"] = "1"
    alone = alone_losses(2 * steps, **program)
    run = tmp / "run"
    first = vlac.submit(_program(tmp, "a", first_layout, **program), executor="local", folder=tmp / "s1",
                        out_dir=run, max_steps=steps).results()[0]
    second = vlac.submit(_program(tmp, "b", then_layout, **program), executor="local", folder=tmp / "s2",
                         out_dir=run, max_steps=steps).results()[0]
    assert second["steps"] == list(range(steps, 2 * steps))
    return alone, first["losses"] + second["losses"]


@pytest.mark.parametrize("first_layout, then_layout", [("pp2", "dp1"), ("dp1", "pp2")])
def test_a_tied_checkpoint_resumes_across_pipeline_layouts(tmp_path, monkeypatch, alone_losses, first_layout,
                                                           then_layout):
    """Five steps under one layout, five more under the other, from its checkpoint: the losses of
    ten steps in one process (the single-process checkpoint has the tied weight's optimiser state
    under embed.weight only; the last stage reads it for head.weight)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    alone, resumed = _resumed_losses(tmp_path, alone_losses, first_layout, then_layout, 5,
                                     sets=("backbone.tied_embeddings=true", "train.checkpoint_every=5"))
    assert resumed == pytest.approx(alone, rel=1e-4)


def test_a_pipeline_rank_holding_only_frozen_stages_resumes(tmp_path, monkeypatch, alone_losses):
    """Flamingo's frozen language model under pp2 with two virtual stages leaves pipeline rank 1
    only frozen blocks: it saves a checkpoint without optimiser state, loads it back with an empty
    optimiser, and the resumed run's losses are one process's."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    alone, resumed = _resumed_losses(tmp_path, alone_losses, "pp2+v2", "pp2+v2", 3, spec=EXAMPLES / "flamingo.yaml",
                                     sets=("train.checkpoint_every=3",), profile="tiny", microbatch_size=2)
    assert resumed == pytest.approx(alone, rel=1e-4)
