"""Pipeline features beyond plain stages, in one process: the zero-bubble schedule's checks, tied
embeddings (both names in checkpoints, loadable across layouts), the flow head split over the
first and last stage, and corrupted inputs drawn once per micro-batch and replayed by the loss."""

import contextlib
from pathlib import Path

import pytest
import torch

import vlac
from vlac.runtime.checkpoint import Checkpointer, _tied_name
from vlac.runtime.data import SyntheticData
from vlac.runtime.losses import Objective
from vlac.runtime.model import build_model
from vlac.runtime.parallel.parallelize import moe_rows
from vlac.runtime.parallel.pipeline import StageModule, check_pipelinable, model_view
from vlac.runtime.parallel.pipeline_loss import PipelineLoss
from vlac.runtime.parallel.pipeline_schedules import check_schedule
from vlac.runtime.parallel.pipeline_tied import is_tied

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TINY = EXAMPLES / "tiny_vla.yaml"
CPU = torch.device("cpu")


# ---- schedules ----------------------------------------------------------------------------------
@pytest.mark.parametrize("m, pp", [(2, 2), (3, 2), (4, 2), (6, 2), (8, 2), (4, 4), (8, 4), (12, 4)])
def test_zero_bubble_runs_when_m_is_a_multiple_of_its_rounds(m, pp):
    check_schedule("zero_bubble", pp, 1, m)


@pytest.mark.parametrize("kw, match", [
    (dict(schedule="zero_bubble", pp=2, virtual_stages=1, m=5),
     r"plan.num_microbatches = 5 .* multiple of 2; re-plan so that m is e.g. 4"),
    (dict(schedule="zero_bubble", pp=2, virtual_stages=2, m=4), r"one stage per rank .* --pin virtual_stages=1"),
    (dict(schedule="zero_bubble", pp=2, virtual_stages=1, m=4, dp=2, zero=3), r"plan.zero = 3 .* --pin zero=2"),
    (dict(schedule="1f1b", pp=4, virtual_stages=1, m=2), r"at least pp micro-batches"),
    (dict(schedule="dualpipe", pp=2, virtual_stages=1, m=4), r"choose one of gpipe, 1f1b, interleaved_1f1b, zero_bubble"),
])
def test_schedules_torch_cannot_run_are_refused_with_the_plan_field(kw, match):
    with pytest.raises(ValueError, match=match):
        check_schedule(**kw)
    check_schedule("zero_bubble", 2, 1, 4, dp=2, zero=2)


def test_zero_bubble_is_a_runtime_schedule():
    from vlac.runtime.parallel.mesh import SCHEDULES

    assert "zero_bubble" in SCHEDULES


# ---- tied embeddings ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tied():
    exp = vlac.load(TINY, ["backbone.layers=2", "backbone.tied_embeddings=true"])
    return exp, build_model(exp)


def test_tied_stages_each_hold_one_name_of_the_weight(tied):
    exp, model = tied
    check_pipelinable(exp, model)
    first = dict(model_view(model, [0], first=True, last=False).named_parameters())
    last = dict(model_view(model, [1], first=False, last=True).named_parameters())
    assert is_tied(model) and "embed.weight" in first and "head.weight" not in first
    assert "head.weight" in last and "embed.weight" not in last
    assert last["head.weight"] is first["embed.weight"]  # one process: one tensor; ranks: equal copies


@pytest.mark.parametrize("key, other", [
    ("embed.weight", "head.weight"), ("head.weight", "embed.weight"),
    ("state.head.weight.exp_avg", "state.embed.weight.exp_avg"),
    ("param_groups.embed.weight.lr", "param_groups.head.weight.lr"),
    ("pos_embed.weight", None), ("layers.0.attn.wq.weight", None), ("video.cam.embed.weight", None),
])
def test_tied_names_map_whole_names_only(key, other):
    assert _tied_name(key) == other


def _trained(module: torch.nn.Module, exp, steps: int = 2) -> torch.optim.Optimizer:
    """AdamW state for every parameter of `module`; the fake gradient is a function of the value,
    so equal copies (tied weights on two stages) get equal gradients and stay equal."""
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    for _ in range(steps):
        for p in module.parameters():
            p.grad = torch.sin(3 * p.detach()) + 0.1
        opt.step()
    return opt


def test_a_single_process_checkpoint_loads_into_the_last_stage_and_back(tied, tmp_path):
    exp, _ = tied
    single = build_model(exp)
    opt = _trained(single, exp)
    Checkpointer(tmp_path / "a", 2, True).save(1, single, opt, {})
    saved_avg = opt.state[single.embed.weight]["exp_avg"].clone()

    # the last pipeline stage asks for head.weight and its optimiser state under that name
    whole = build_model(exp, seed=123)
    last = model_view(whole, [1], first=False, last=True)
    last_opt = _trained(last, exp, steps=1)
    Checkpointer(tmp_path / "a", 2, True).load(tmp_path / "a" / "step_00000001", last, last_opt)
    torch.testing.assert_close(last.head.weight, single.embed.weight, rtol=0, atol=0)
    torch.testing.assert_close(last_opt.state[last.head.weight]["exp_avg"], saved_avg, rtol=0, atol=0)

    # a pipeline's checkpoint (both names, one copy each; here untied copies in one module) loads
    # into one process: its optimiser state is the first stage's
    piped = build_model(exp, seed=7)
    piped.head.weight = torch.nn.Parameter(piped.embed.weight.detach().clone())
    piped_opt = _trained(piped, exp)
    Checkpointer(tmp_path / "b", 2, True).save(2, piped, piped_opt, {})
    again = build_model(exp, seed=9)
    again_opt = _trained(again, exp, steps=1)
    Checkpointer(tmp_path / "b", 2, True).load(tmp_path / "b" / "step_00000002", again, again_opt)
    assert again.head.weight is again.embed.weight
    torch.testing.assert_close(again.embed.weight, piped.embed.weight, rtol=0, atol=0)
    torch.testing.assert_close(again_opt.state[again.embed.weight]["exp_avg"],
                               piped_opt.state[piped.embed.weight]["exp_avg"], rtol=0, atol=0)


# ---- flow head and corrupted inputs ---------------------------------------------------------------
def _stages(model, splits):
    rows, _ = moe_rows(model)
    n = len(splits)
    return [StageModule(model_view(model, ids, first=i == 0, last=i == n - 1), i == 0, i == n - 1,
                        [rows[j] for j in ids if j in rows], contextlib.nullcontext)
            for i, ids in enumerate(splits)]


@pytest.mark.parametrize("spec", ["transfusion.yaml", "show_o.yaml", "beit.yaml"])
def test_the_pipeline_loss_reproduces_the_single_process_corruption(spec):
    """Stages fed by PipelineLoss.prepare's inputs and scored by the loss give one process's loss
    terms, whatever the global generator's state (the corruption is counter-based)."""
    exp = vlac.load(EXAMPLES / spec, profile="tiny")
    model = build_model(exp)
    data = SyntheticData(exp)
    batches = [data.micro_batch(0, i * 2, 2, 40.0, CPU) for i in range(2)]
    objective = Objective(model, exp)

    torch.manual_seed(5)
    ref = [objective(b) for b in batches]

    torch.manual_seed(6)  # another state: the corruption must not depend on it
    stages = _stages(model, [[0], [1]])
    loss = PipelineLoss(exp, stages[-1].view, CPU)
    inputs = loss.prepare(batches, dp=1)
    for i, (inp, want) in enumerate(zip(inputs, ref)):
        fields = {k: v for k, v in inp.items() if v.dim() > 0}
        out = stages[1](stages[0](**fields), **fields)
        got = loss(out, torch.full((2,), i))
        torch.testing.assert_close(got, want["ar_loss"] + want["aux_loss"] / 2)
        for key in ("masked_loss", "flow_loss"):
            if key in want:
                torch.testing.assert_close(loss.records[-1][key], want[key])


def test_the_flow_head_is_split_between_first_and_last_stage():
    exp = vlac.load(EXAMPLES / "transfusion.yaml", profile="tiny")
    model = build_model(exp)
    check_pipelinable(exp, model)
    first = dict(model_view(model, [0], first=True, last=False).named_parameters())
    last = dict(model_view(model, [1], first=False, last=True).named_parameters())
    assert set(first) | set(last) == set(dict(model.named_parameters())) and not set(first) & set(last)
    assert any(n.startswith("flow.time_embed.") for n in first) and not any(n.startswith("flow.") for n in last
                                                                             if "velocity" not in n)
    assert any(n.startswith("flow.velocity.") for n in last)


def test_verify_names_the_zero_bubble_layout():
    from vlac.verify import parse_layout

    lay = parse_layout("pp2+zb")
    assert (lay.pp, lay.schedule, lay.virtual_stages) == (2, "zero_bubble", 1)
