"""train.py's TP_PLAN: the emitted literal is the runtime's default split of the decoder layers,
an edit that keeps a region whole really changes what runs, and an invalid edit is refused with
the module and its valid choices named."""

from __future__ import annotations

import ast
import os
import socket
from pathlib import Path

import pytest
import torch
from torch.distributed.tensor import DTensor

import vlac
from vlac.runtime.model import build_model
from vlac.runtime.parallel.tensor_parallel import apply_tensor_parallel, default_tp_plan, replicated_regions

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
DENSE = ["parallelism.dp=1", "parallelism.tp=2", "parallelism.sequence_parallel=true", "cluster.gpus_per_node=2"]


@pytest.fixture(scope="module")
def dense():
    return vlac.load(EXAMPLES / "dense_text_1b.yaml", DENSE, "tiny")


def test_the_emitted_literal_is_the_default_plan(dense, tmp_path):
    program = vlac.emit(dense, vlac.plan(dense), tmp_path / "tp2")
    tree = ast.parse((program / "train.py").read_text())
    literal = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", "") == "TP_PLAN")
    default = default_tp_plan(build_model(dense, "meta"), sequence_parallel=True)
    assert literal == default and list(literal) == list(default)
    assert default["mlp.w1"] == "colwise" and default["mlp.w2"] == "rowwise" and default["attn_norm"] == "sequence_parallel"


@pytest.mark.parametrize("edit, message", [
    ({"mlp.w4": "colwise"}, r"no module 'mlp.w4'.*mlp.w1"),
    ({"attn.wq": "rowwise"}, r"TP_PLAN\['attn.wq'\]: 'rowwise' is not valid; choices: 'colwise', 'replicate'"),
    ({"attn_norm": "replicate"}, r"TP_PLAN\['attn_norm'\]: 'replicate' is not valid; choices: 'sequence_parallel'"),
    ({"mlp.w1": "replicate"}, r"modules of 'mlp' \(mlp.w1, mlp.w3, mlp.w2\) are split together"),
])
def test_an_invalid_edit_names_the_module_and_the_choices(dense, edit, message):
    default = default_tp_plan(build_model(dense, "meta"), sequence_parallel=True)
    with pytest.raises(ValueError, match=message):
        replicated_regions({**default, **edit}, default)
    missing = dict(default)
    del missing["attn.wo"]
    with pytest.raises(ValueError, match="module 'attn.wo' is missing; give it 'rowwise' or 'replicate'"):
        replicated_regions(missing, default)


def test_keeping_the_mlp_whole_changes_what_runs(dense):
    """On a one-rank tp mesh (gloo, this process) the split modules become DTensors; the edited
    plan leaves the MLP's weights plain tensors and still splits attention."""
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        default = default_tp_plan(build_model(dense, "meta"), sequence_parallel=False)
        edited = {k: ("replicate" if k.startswith("mlp.") else v) for k, v in default.items()}
        split, whole = build_model(dense), build_model(dense)
        apply_tensor_parallel(split, mesh, False, tp_plan=default)
        apply_tensor_parallel(whole, mesh, False, tp_plan=edited)
        assert isinstance(split.layers[0].mlp.w1.weight, DTensor)
        assert not isinstance(whole.layers[0].mlp.w1.weight, DTensor)
        assert isinstance(whole.layers[0].attn.wq.weight, DTensor)
    finally:
        torch.distributed.destroy_process_group()


def _rank(rank: int, port: int, plan: dict, out: str) -> None:
    import json

    from vlac.runtime.data import SyntheticData
    from vlac.runtime.distributed import DistEnv
    from vlac.runtime.losses import Objective
    from vlac.runtime.parallel import parallelize

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        exp = vlac.load(EXAMPLES / "dense_text_1b.yaml", DENSE, "tiny")
        data = SyntheticData(exp)
        batch = data.micro_batch(0, 0, 2, data.global_loss_tokens(0), torch.device("cpu"))
        reference = build_model(exp)
        want = Objective(reference, exp)(batch)["loss"]
        want.backward()
        layout = parallelize(build_model(exp), exp, plan, DistEnv(rank, 2, rank, torch.device("cpu")))
        got = Objective(layout.model, exp)(batch)["loss"]
        got.backward()
        w1 = layout.model.layers[0].mlp.w1.weight
        Path(f"{out}.{rank}").write_text(json.dumps({
            "loss": [float(got), float(want)], "w1_plain": not isinstance(w1, DTensor),
            "w1_grad_diff": float((w1.grad - reference.layers[0].mlp.w1.weight.grad).abs().max())}))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_an_edited_plan_runs_and_keeps_the_single_process_loss(dense, tmp_path):
    """tp2 with sequence parallelism and the MLP kept whole: the loss and the MLP's gradient are
    the single process's (2 gloo processes)."""
    import json

    import torch.multiprocessing as mp

    from vlac.runtime.program import with_layout

    plan = vlac.plan(dense).to_json()
    default = default_tp_plan(build_model(dense, "meta"), sequence_parallel=True)
    edited = {k: ("replicate" if k.startswith("mlp.") else v) for k, v in default.items()}
    mesh = {k: plan["plan"][k] for k in ("pp", "dp", "cp", "tp")}
    plan = with_layout(plan, mesh, sequence_parallel=True, tp_plan=edited)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, plan, str(tmp_path / "r")), nprocs=2)
    for r in range(2):
        result = json.loads((tmp_path / f"r.{r}").read_text())
        got, want = result["loss"]
        assert abs(got - want) <= 1e-5 * abs(want), result
        assert result["w1_plain"] and result["w1_grad_diff"] < 1e-5, result
