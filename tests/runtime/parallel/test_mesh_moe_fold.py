"""Expert parallelism folds over the ranks holding distinct tokens of the MoE layers: dp, and with
whole experts (etp = 1) cp and (under sequence parallelism) tp, dropless or with a capacity (mesh.py)."""

import pytest

from vlac.runtime.parallel.expert_parallel import expert_grad_divisor, folded_dims, fsdp_expert_scale
from vlac.runtime.parallel.mesh import LayoutError, ParallelDims


def dims(**kw) -> ParallelDims:
    p = {"dp": 1, "tp": 1, "pp": 1, "cp": 1, "ep": 1, "zero": 0, "sequence_parallel": False, "schedule": "none",
         "virtual_stages": 1, "recompute": "none"}
    p.update(kw)
    return ParallelDims.from_plan({"plan": p}).with_moe()


def test_dropless_layers_fold_ep_over_dp_cp_and_tp_under_sp():
    d = dims(dp=2, tp=2, cp=2, ep=4, sequence_parallel=True)
    assert d.moe_token_dims == ("dp", "cp", "tp") and d.token_ranks == 8
    assert d.expert_mesh_dims == ("pp", "edp", "ep")
    d.check(8)
    assert "ep 4 (within dp x cp x tp)" in d.summary()
    # without sp every tp rank holds the whole sequence: tp stays outside the fold
    nosp = dims(dp=2, tp=2, cp=2, ep=4)
    assert nosp.moe_token_dims == ("dp", "cp") and nosp.expert_mesh_dims == ("pp", "edp", "ep", "tp")
    nosp.check(8)


def test_experts_split_by_width_fold_ep_out_of_dp_only():
    d = dims(dp=2, tp=2, cp=2, ep=2, sequence_parallel=True, expert_tensor_parallel=2)
    assert d.moe_token_dims == ("dp",) and d.expert_mesh_dims == ("pp", "edp", "ep", "cp", "tp")
    d.check(8)
    with pytest.raises(LayoutError, match=r"plan.ep = 4 must divide plan.dp = 2.*--pin etp=1"):
        dims(dp=2, tp=2, ep=4, sequence_parallel=True, expert_tensor_parallel=2).check(4)


def test_an_ep_that_does_not_divide_the_token_ranks_is_refused_with_the_count():
    with pytest.raises(LayoutError, match=r"plan.ep = 4 must divide the 2 ranks .*dp 1 x cp 2.*divisor of 2"):
        dims(cp=2, tp=2, ep=4).check(4)  # no sp: tp ranks share tokens


def test_expert_gradients_are_divided_by_dp_and_cp_when_folded_over_cp():
    d = dims(dp=2, tp=2, cp=2, ep=4, sequence_parallel=True, zero=3)
    assert expert_grad_divisor(d) == 4 and folded_dims(d) == ("cp", "tp")
    # FSDP's mean over the 2 edp ranks -> the sum over them / (dp * cp)
    assert fsdp_expert_scale(d) == pytest.approx(2 / 4)
    c = dims(dp=4, tp=2, cp=2, ep=2, sequence_parallel=True, zero=3, expert_tensor_parallel=2)
    assert expert_grad_divisor(c) == 4 and folded_dims(c) == () and fsdp_expert_scale(c) == pytest.approx(1 / 2)
    assert folded_dims(dims(cp=2)) == ()  # no expert parallelism: nothing folded
