"""Loading and exporting under parallel layouts (two gloo ranks): each rank reads only its pieces
of the checkpoint and ends with the single-process model's weights; a checkpoint saved under
dp/fsdp/tp/pp/ep exports to the same bytes as one saved by a single process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hf_models import experiment, save_tiny
from process_cases import spawn_cases

from vlac.spec.system import Cluster

TWO = Cluster.model_validate({"preset": "h100-sxm", "nodes": 1, "gpus_per_node": 2})
# layout -> (family, plan pins); qwen2 ties its embeddings, qwen3_moe has experts
LAYOUTS = {
    "dp2": ("llama", {"dp": 2, "zero": 0}),
    "fsdp2": ("qwen2", {"dp": 2, "zero": 3}),
    "tp2": ("qwen2", {"tp": 2, "sequence_parallel": True}),
    "pp2": ("qwen2", {"pp": 2}),
    "ep2": ("qwen3_moe", {"dp": 2, "ep": 2}),
    "tp2+etp": ("qwen3_moe", {"tp": 2, "etp": 2}),
}
MOE = {"moe": {"capacity_factor": 2.0}}  # experts / top_k: no token is ever dropped


def _experiment(family: str, src: Path):
    return experiment(src, **(MOE if family == "qwen3_moe" else {}))


def _plan(exp, pins: dict) -> dict:
    import vlac

    base = {"dp": 1, "tp": 1, "pp": 1, "ep": 1, "cp": 1, "zero": 0, "microbatch_size": 1}
    return vlac.plan(exp, cluster=TWO, pin={**base, **pins}).to_json()


def _rank(rank: int, family: str, pins: dict, src: str, work: str) -> None:
    """One layout on this rank of the process group (spawn_cases runs every layout in one)."""
    from torch.distributed.tensor import DTensor

    from vlac.runtime.checkpoint import Checkpointer
    from vlac.runtime.distributed import DistEnv
    from vlac.runtime.hf import reader as reader_module
    from vlac.runtime.hf.export import export
    from vlac.runtime.hf.load import load_pretrained
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer
    from vlac.runtime.parallel import parallelize

    exp = _experiment(family, Path(src))
    layout = parallelize(build_model(exp, seed=rank + 1), exp, _plan(exp, pins), DistEnv(rank, 2, rank, torch.device("cpu")))
    reads: dict[str, int] = {}
    original = reader_module.CheckpointReader.read

    def counting(self, name, region=None):
        t = original(self, name, region)
        reads[name] = reads.get(name, 0) + t.numel()
        return t

    reader_module.CheckpointReader.read = counting
    load_pretrained(layout.model, exp)
    reader_module.CheckpointReader.read = original
    full, local = {}, {}
    for name, p in layout.model.named_parameters():
        clean = name.replace("_checkpoint_wrapped_module.", "").replace("module.", "")
        full[clean] = (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
        local[clean] = (p.to_local() if isinstance(p, DTensor) else p).numel()
    torch.save({"full": full, "local": local, "reads": reads}, Path(work) / f"rank{rank}.pt")
    ckpt = Checkpointer(Path(work) / "run" / "checkpoints", keep_last=1, is_main=rank == 0)
    step_dir = ckpt.save(0, layout.model, build_optimizer(layout.model, exp), {"experiment": exp.name})
    if rank == 0:
        export(exp, step_dir, Path(work) / "export")


def _single_process(family: str, src: Path, work: Path):
    from vlac.runtime.checkpoint import Checkpointer
    from vlac.runtime.hf.export import export
    from vlac.runtime.hf.load import load_pretrained
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer

    exp = _experiment(family, src)
    model = build_model(exp)
    load_pretrained(model, exp)
    step_dir = Checkpointer(work / "checkpoints", 1, True).save(0, model, build_optimizer(model, exp), {})
    export(exp, step_dir, work / "export")
    return model


@pytest.fixture(scope="module")
def layouts_run(tmp_path_factory) -> Path:
    """Every layout's source checkpoint (LAYOUT/src) and what the two ranks made of it
    (LAYOUT/many), from one spawn of 2 ranks: starting them costs more than a layout."""
    root = tmp_path_factory.mktemp("hf-layouts")
    cases = {}
    for layout, (family, pins) in LAYOUTS.items():
        src = save_tiny(family, root / layout / "src")
        (root / layout / "many").mkdir()
        cases[layout] = (family, pins, str(src), str(root / layout / "many"))
    spawn_cases(_rank, cases, nprocs=2, out=root / "done.json")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_loads_its_shards_and_exports_the_same_bytes(layout, layouts_run, tmp_path):
    family, pins = LAYOUTS[layout]
    src = layouts_run / layout / "src"
    reference = _single_process(family, src, tmp_path / "one")
    want = {n: p.detach() for n, p in reference.named_parameters()}
    for rank in range(2):
        got = torch.load(layouts_run / layout / "many" / f"rank{rank}.pt")
        for name, tensor in got["full"].items():
            if name in want:
                assert torch.equal(tensor, want[name]), (layout, rank, name, float((tensor - want[name]).abs().max()))
        assert any(n in want for n in got["full"])
        # reads of block tensors (not the vocabulary, whose statistics read the text rows) are
        # exactly this rank's pieces: no rank reads what another holds
        block_reads = sum(n for name, n in got["reads"].items() if ".layers." in name)
        block_local = sum(n for name, n in got["local"].items() if name.startswith("layers."))
        assert block_reads == block_local, (layout, rank, block_reads, block_local)
    one, many = tmp_path / "one" / "export", layouts_run / layout / "many" / "export"
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in many.iterdir())
    for name in names:
        if name != "README.md":  # the card names the spec, identical; compared below without paths
            assert (one / name).read_bytes() == (many / name).read_bytes(), (layout, name)
    assert (one / "README.md").read_text() == (many / "README.md").read_text()
    assert json.loads((many / "config.json").read_text())["model_type"] == family
