"""The dropless experts' per-GPU GEMM on vlac's own stack follows its runtime's routing, as the
capacity experts' does: with experts split by width (etp = tp > 1) the layer is gathered over
cp and tp, so every rank runs its 1/etp slice of the experts on the whole micro-batch, whatever
cp is; with etp = 1 each rank routes its own 1/(tp*cp) of the tokens."""

from pathlib import Path

import numpy as np

import vlac
from vlac.compiler.layer_times import _gemm_shape
from vlac.compiler.moe_routing import token_shards
from vlac.compiler.planner import Search

DSV3 = Path(__file__).resolve().parents[2] / "examples" / "deepseek_v3.yaml"


def _expert_scale(g, tp: float, etp: float, cp: float, mb: float = 1.0) -> float:
    """Sequences' worth of tokens one GPU runs the dropless experts' GEMM `g` on."""
    arr = lambda x: np.array([float(x)])  # noqa: E731
    sp = np.array([True])
    tp_shards, cp_shards = token_shards(arr(etp), arr(tp), sp, arr(cp))
    moe_tokens = arr(mb) / (tp_shards * cp_shards)
    scale, *_ = _gemm_shape(g, arr(tp), sp, arr(4), arr(etp), arr(mb) / arr(cp), moe_tokens)
    return float(scale[0])


def test_dropless_experts_are_routed_as_the_vlac_runtime_routes_them():
    exp = vlac.load(DSV3, profile="tiny")
    assert exp.moe.capacity_factor is None and exp.stack.resolved().preset == "vlac"
    prof = Search(exp, exp.cluster, vlac.lower(exp, seq_len=32)).model.p
    experts = [g for p in prof.profiles for g in p.gemms if g.expert]
    assert experts and all(g.moe_part for g in experts)  # the '...mlp' node was missed before
    # gathered over cp when the experts are split by width: cp does not shrink their tokens
    g = experts[0]
    assert _expert_scale(g, tp=2, etp=2, cp=2) == _expert_scale(g, tp=2, etp=2, cp=1) == 0.5
    # each rank's own tokens with whole experts
    assert _expert_scale(g, tp=2, etp=1, cp=2) == 0.25
