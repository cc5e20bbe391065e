"""Multi-token prediction in the compiler: the lowered graph holds the MTP modules (runtime/mtp.py)
on the output side, so the pipeline partition charges them and their extra head and
cross-entropy to the last stage; their parameters follow the closed form; graphs derived by depth
(graph cache) equal a direct lowering."""

from pathlib import Path

import pytest

import vlac
from vlac.compiler import formulas as F
from vlac.compiler.graph_cache import DerivedGraph, GraphCache, graph_differences
from vlac.runtime.model import build_model

FLAGSHIP = Path(__file__).resolve().parents[2] / "examples" / "vla_10b_moe_h100.yaml"
MTP = {"ar": {}, "mtp": {"depth": 2, "weight": 0.1}}


@pytest.fixture(scope="module")
def gpt():
    return F.gpt_experiment(layers=2, hidden=128, heads=4, seq_len=64, vocab=512, overrides={"losses": MTP})


def test_parameters_formula_equals_graph_equals_model(gpt):
    bb = gpt.backbone
    h, V, s = bb.hidden, gpt.vocab_layout().padded, gpt.train.seq_len
    g = vlac.lower(gpt)
    model = build_model(gpt, "meta")
    # the formula leaves out the final LayerNorm (weight and bias), as in test_gpt_formulas
    assert g.params_total == F.parameters(bb.layers, h, V, s) + 2 * h + F.mtp_parameters(2, h)
    assert g.params_total == sum(p.numel() for p in model.parameters())


def test_mtp_is_charged_to_the_output_side(gpt):
    g = vlac.lower(gpt)
    plain = vlac.lower(gpt.model_copy(update={"losses": gpt.losses.model_copy(update={"mtp": None})}))
    L = gpt.backbone.layers
    mtp = [n for n in g.nodes if n.module.startswith("model.mtp.")]
    assert mtp and {n.layer for n in mtp} == {L}
    heads = [n for n in g.nodes if n.module == "model.head" and n.kind == "gemm"]
    assert len(heads) == 1 + 2 and {n.layer for n in heads} == {L}  # the shared head once per depth
    last, last_plain = g.layers()[-1], plain.layers()[-1]
    assert (last.label, last_plain.label) == ("head+MTP+loss", "head+loss")  # as graph_report names the row
    extra = sum(n.flops_fwd + n.flops_bwd for n in g.nodes if n.layer == L) - \
        sum(n.flops_fwd + n.flops_bwd for n in plain.nodes if n.layer == L)
    assert last.flops_fwd + last.flops_bwd - (last_plain.flops_fwd + last_plain.flops_bwd) == extra > 0
    # the decoder layers cost what they cost without MTP
    assert [(x.params, x.flops_fwd) for x in g.layers()[:-1]] == [(x.params, x.flops_fwd) for x in plain.layers()[:-1]]


def test_pipeline_plan_puts_mtp_on_the_last_stage(gpt):
    p = vlac.plan(gpt, pin={"pp": 2, "tp": 1, "cp": 1})
    split = p.to_json()["plan"]["stage_split"]
    assert split[-1][-1] == gpt.backbone.layers  # the output side (head, loss, MTP) ends the last stage


@pytest.mark.parametrize("layers", [1, 5])
def test_derived_graph_equals_direct_lowering(layers):
    exp = vlac.load(FLAGSHIP, [f"backbone.layers={layers}", "losses.mtp.depth=1"], profile="tiny")
    cache = GraphCache()
    cache.lower(vlac.load(FLAGSHIP, ["backbone.layers=3", "losses.mtp.depth=1"], profile="tiny"))  # a reference
    derived, direct = cache.lower(exp), vlac.lower(exp)
    assert isinstance(derived, DerivedGraph) or layers == 1
    assert graph_differences(derived, direct) == []
    assert derived.layers()[-1].label == direct.layers()[-1].label == "head+MTP+loss"


def test_mtp_blocks_communicate_like_decoder_blocks(gpt):
    """Under tensor (with and without sp) and context parallelism the head key carries the
    collectives of its D = 2 MTP blocks: here blocks of the decoder's own kind, so twice a
    decoder block's; without MTP the head issues none of them."""
    import numpy as np

    from vlac.compiler.layer_times import layer_times
    from vlac.compiler.planner import Search

    def times(exp):
        prof = Search(exp, exp.cluster, vlac.lower(exp)).model.p
        tp, sp, cp = np.array([2.0, 2.0, 1.0]), np.array([True, False, False]), np.array([1.0, 1.0, 2.0])
        one = np.ones(3)
        out = layer_times(prof, tp, sp, cp, one, one, one)
        return out, prof.sequence[1], prof.sequence[-1]

    out, block, head = times(gpt)
    for key in ("tp_fwd", "tp_bwd", "cp"):
        assert (out[key][:, block] > 0).any()
        np.testing.assert_allclose(out[key][:, head], 2 * out[key][:, block], rtol=1e-12)
    plain, _, head = times(gpt.model_copy(update={"losses": gpt.losses.model_copy(update={"mtp": None})}))
    assert not plain["tp_fwd"][:, head].any() and not plain["cp"][:, head].any()
