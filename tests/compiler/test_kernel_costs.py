"""Measured kernel costs: the results file (loading, validation), matching its GPU to the cluster,
and what a measurement does to the plan (direction and size of the change, nothing without one)."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

import vlac
from vlac.compiler.hardware import HBM_EFF
from vlac.compiler.kernel_costs import ENV_VAR, FORMAT, KernelCosts, gpu_matches, kernel_costs_for, load_results
from vlac.compiler.planner import Search
from vlac.compiler.profile import MEMBOUND_PASSES
from vlac.spec import SpecError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny_vla.yaml"
H100_DEVICE = "NVIDIA H100 80GB HBM3"  # torch.cuda.get_device_name() of an H100 SXM
H100_BW = 3.35e12


def entry(case, kernels, phase, nbytes, triton, match=True, **shape):
    return {"case": case, "kernels": kernels, "phase": phase, "shape": shape or {"tokens": 1}, "bytes": nbytes,
            "match": match, "seconds": {"triton": triton, "torch": None if triton is None else 3 * triton,
                                        "compiled": None}}


def results(device=H100_DEVICE, norm_efficiency=0.5, rope_efficiency=None):
    """A results file as benchmarks/kernels.py writes it; rms_norm's best entry (forward+backward,
    the largest) runs at `norm_efficiency` of H100 HBM, the other entries must not be chosen."""
    rows = [
        entry("rms_norm", ["rms_norm"], "forward", 4e8, 4e8 / (0.99 * H100_BW)),  # forward only: not preferred
        entry("rms_norm_fwd_bwd", ["rms_norm"], "forward+backward", 1e6, 1e6 / (0.2 * H100_BW), tokens=8),
        entry("rms_norm_fwd_bwd", ["rms_norm"], "forward+backward", 2e8, 2e8 / (norm_efficiency * H100_BW),
              tokens=16384),
        entry("rms_norm_fwd_bwd", ["rms_norm"], "forward+backward", 9e8, 1e-3, match=False, tokens=65536),
        entry("moe_roundtrip_fwd_bwd", ["moe_permute", "moe_unpermute"], "forward+backward", 1e8, 1e-4),
        entry("fp8_cast", ["fp8_cast"], "forward", 1e8, None),  # Triton timing failed
    ]
    if rope_efficiency is not None:
        rows.append(entry("apply_rope_fwd_bwd", ["apply_rope"], "forward+backward", 3e8,
                          3e8 / (rope_efficiency * H100_BW)))
    return {"format": FORMAT, "device": device, "torch": "2.6.0", "triton": "3.2.0", "cuda": "12.4",
            "settings": {"tokens": 16384}, "results": rows}


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def tiny():
    exp = vlac.load(TINY)
    return exp, vlac.lower(exp)


# ---- the file ----------------------------------------------------------------------------------------
def test_a_results_file_becomes_an_achieved_bandwidth_per_costed_kernel(tmp_path):
    path = write(tmp_path / "kernels-nvidia-h100.json", results(rope_efficiency=0.7))
    costs = kernel_costs_for(vlac.load(TINY).cluster, path)
    assert sorted(costs.measured) == ["apply_rope", "rms_norm"]  # only kernels the step time charges
    norm = costs.measured["rms_norm"]
    # forward+backward over forward; the largest such shape that matched its reference
    assert (norm.case, norm.phase, norm.shape) == ("rms_norm_fwd_bwd", "forward+backward", {"tokens": 16384})
    assert norm.bandwidth == pytest.approx(0.5 * H100_BW)
    assert costs.seconds("rms_norm", 1e9) == pytest.approx(1e9 / (0.5 * H100_BW))
    assert costs.seconds("moe_permute", 1e9) == pytest.approx(1e9 / (HBM_EFF * H100_BW))  # assumed
    described = costs.describe()
    assert described["kernels"]["rms_norm"]["source"] == "measured"
    assert described["kernels"]["rms_norm"]["hbm_efficiency"] == pytest.approx(0.5)
    assert described["kernels"]["moe_permute"]["source"] == "assumed"  # its own entries are absent
    assert described["kernels"]["fp8_blockwise_cast"]["source"] == "not costed"
    assert described["file"]["name"] == path.name and described["file"]["applied"]
    assert len(described["file"]["sha256"]) == 64 and str(tmp_path) not in json.dumps(described)


BAD = [
    (lambda d: d["results"][0]["seconds"].update(triton=-1.0), "results[0].seconds.triton", "greater than 0"),
    (lambda d: d["results"][1].update(kernels=["rmsnorm"]), "results[1].kernels[0]", "'rms_norm'"),
    (lambda d: d["results"][1].update(phase="backward"), "results[1].phase", "'forward+backward'"),
    (lambda d: d["results"][2].update(bytes=0), "results[2].bytes", "greater than 0"),
    (lambda d: d["results"][2].update(secs=1), "results[2].secs", "valid keys here"),
    (lambda d: d.pop("device"), "device", "missing"),
    (lambda d: d.update(format="vlac-kernel-costs/0"), "format", "'vlac-kernel-costs/1'"),
    (lambda d: d["results"].append(copy.deepcopy(d["results"][0])), "appears twice", "one timing per case and shape"),
]


@pytest.mark.parametrize("mutate,field,fix", BAD, ids=[b[1] for b in BAD])
def test_a_bad_file_is_reported_by_field(tmp_path, mutate, field, fix):
    data = results()
    mutate(data)
    with pytest.raises(SpecError) as err:
        load_results(write(tmp_path / "kernels-x.json", data))
    assert field in str(err.value) and fix in str(err.value) and "kernels-x.json" in str(err.value)


def test_unreadable_sources_are_named(tmp_path, monkeypatch):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SpecError, match=r"(?s)broken.json.*not JSON"):
        load_results(broken)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing.json"))
    with pytest.raises(SpecError, match=f"{ENV_VAR}: no kernel cost file"):
        kernel_costs_for(vlac.load(TINY).cluster)


@pytest.mark.parametrize("device,gpu,same", [
    ("NVIDIA H100 80GB HBM3", "H100-SXM", True), ("NVIDIA H100 PCIe", "H100-SXM", False),
    ("NVIDIA H100 NVL", "H100-SXM", False), ("NVIDIA H200", "H200", True), ("NVIDIA GH200 480GB", "H200", False),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB-SXM", True), ("NVIDIA A100-SXM4-40GB", "A100-80GB-SXM", False),
])
def test_the_measuring_device_must_be_the_cluster_gpu(device, gpu, same):
    assert gpu_matches(device, gpu) is same


# ---- the plan ----------------------------------------------------------------------------------------
def plan_json(tiny, monkeypatch, path=None) -> dict:
    exp, g = tiny
    if path is None:
        monkeypatch.delenv(ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(ENV_VAR, str(path))
    out = vlac.plan(exp, graph=g).to_json()
    out["search"].pop("timings", None)
    return out


def without(d: dict, *keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def test_without_a_measurement_nothing_changes_to_the_last_bit(tiny, monkeypatch, tmp_path):
    exp, g = tiny
    monkeypatch.delenv(ENV_VAR, raising=False)
    first, second = plan_json(tiny, monkeypatch), plan_json(tiny, monkeypatch)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert {v["source"] for v in first["kernel_costs"]["kernels"].values()} == {"assumed", "not costed",
                                                                                "not in this model"}
    assert first["kernel_costs"]["file"] is None
    # the layer times equal those of a profile that attributes no traffic to any kernel (the model
    # before kernel costs existed)
    prof = Search(exp, exp.cluster, g).model.p
    args = (np.array([1, 2]), np.array([False, True]), np.array([1, 1]), np.array([1, 4]), np.array([1, 1]),
            np.array([1, 1]))
    before = prof.times(*args)
    assert any(p.mem_kernels for p in prof.profiles)
    for p in prof.profiles:
        p.mem_kernels = {}
    after = prof.times(*args)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # a file measured on another GPU is not applied: only the file note differs
    other = plan_json(tiny, monkeypatch, write(tmp_path / "kernels-a100.json", results("NVIDIA A100-SXM4-80GB")))
    assert without(other, "kernel_costs") == without(first, "kernel_costs")
    assert not other["kernel_costs"]["file"]["applied"] and "not on the cluster's H100-SXM" in \
        other["kernel_costs"]["file"]["note"]


def norm_traffic_per_step(exp, g, plan) -> float:
    """HBM bytes of the RMSNorm nodes in one step of one GPU, from the graph (the cost model's rule:
    MEMBOUND_PASSES x the bytes a node saves, per sequence), for the plan's layout (tp=pp=cp=1)."""
    lay = plan["plan"]
    assert (lay["tp"], lay["pp"], lay["cp"], lay["recompute"]) == (1, 1, 1, "none")
    # the bytes the stack's norm keeps (vlac's default stack: the Triton RMSNorm, spec.stack)
    kept = Search(exp, exp.cluster, g).model.p.stack_costs
    tokens = g.seq_len * g.micro_batch
    per_sequence = sum(MEMBOUND_PASSES * kept.saved(n, tokens)["none"] for n in g.nodes if n.kind == "norm") / g.micro_batch
    return per_sequence * lay["microbatch_size"] * lay["num_microbatches"]


@pytest.mark.parametrize("efficiency", [0.25, 0.95])
def test_a_measured_norm_moves_the_step_time_by_its_traffic(tiny, monkeypatch, tmp_path, efficiency):
    exp, g = tiny
    base = plan_json(tiny, monkeypatch)
    path = write(tmp_path / "kernels-nvidia-h100-80gb-hbm3.json", results(norm_efficiency=efficiency))
    measured = plan_json(tiny, monkeypatch, path)
    assert measured["plan"] == base["plan"]  # the same layout, so the difference is the kernel's alone
    expected = norm_traffic_per_step(exp, g, base) * (1 / (efficiency * H100_BW) - 1 / (HBM_EFF * H100_BW))
    got = measured["predicted"]["time_s"]["elementwise"] - base["predicted"]["time_s"]["elementwise"]
    assert got == pytest.approx(expected, rel=1e-6)
    step_change = measured["predicted"]["step_time_s"] - base["predicted"]["step_time_s"]
    # slower than assumed -> longer step, faster -> shorter; the norm time is all that moved (the
    # data-parallel reduction it hides can absorb at most the whole change)
    assert np.sign(step_change) == np.sign(expected) and abs(step_change) <= abs(expected) * (1 + 1e-9)
    kernels = measured["kernel_costs"]["kernels"]
    assert kernels["rms_norm"]["source"] == "measured" and kernels["apply_rope"]["source"] == "assumed"
    assert measured["kernel_costs"]["file"]["name"] == path.name


def test_a_directory_contributes_the_file_of_the_cluster_gpu(tiny, monkeypatch, tmp_path):
    write(tmp_path / "kernels-nvidia-a100.json", results("NVIDIA A100-SXM4-80GB", norm_efficiency=0.1))
    write(tmp_path / "kernels-nvidia-h100.json", results(norm_efficiency=0.4))
    costs = kernel_costs_for(tiny[0].cluster, tmp_path)
    assert costs.file["name"] == "kernels-nvidia-h100.json"
    assert costs.measured["rms_norm"].bandwidth == pytest.approx(0.4 * H100_BW)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert kernel_costs_for(tiny[0].cluster, empty).measured == {}
    assert isinstance(kernel_costs_for(tiny[0].cluster, empty), KernelCosts)


def _per_kernel(kernel, efficiency):
    return entry(f"{kernel}_fwd_bwd", [kernel], "forward+backward", 2e8, 2e8 / (efficiency * H100_BW),
                 tokens=16384)


@pytest.mark.parametrize("overrides, kernel", [
    (["moe.capacity_factor=null"], "moe_permute"),
    (["moe.capacity_factor=null"], "moe_unpermute"),
    (["precision.fp8.enabled=true", "precision.fp8.keep_first_last_bf16=false"], "fp8_cast"),
], ids=["dropless-permute", "dropless-unpermute", "fp8-expert-casts"])
def test_moe_permutation_and_expert_fp8_casts_are_charged_and_re_costed(monkeypatch, tmp_path, overrides, kernel):
    """Dropless experts move their tokens through the permutation kernels, FP8 experts cast their
    operands with vlac's cast kernel: both are in the step time at the assumed rate, and a slower
    measured rate makes the step longer (the layout pinned, so only the kernel's time moves)."""
    exp = vlac.load(TINY, overrides=overrides)
    g = vlac.lower(exp)
    assert kernel in Search(exp, exp.cluster, g).model.p.runtime_kernels
    pin = {"dp": 2, "microbatch_size": 8}

    def plan(path=None):
        if path is None:
            monkeypatch.delenv(ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(ENV_VAR, str(path))
        return vlac.plan(exp, graph=g, pin=pin).to_json()

    base = plan()
    assert base["kernel_costs"]["kernels"][kernel]["source"] == "assumed"
    data = results()
    data["results"].append(_per_kernel(kernel, 0.05))
    slow = plan(write(tmp_path / "kernels-nvidia-h100.json", data))
    assert slow["kernel_costs"]["kernels"][kernel]["source"] == "measured"
    assert slow["plan"] == base["plan"]
    assert slow["predicted"]["time_s"]["elementwise"] > base["predicted"]["time_s"]["elementwise"]


def test_dropless_permutation_traffic_counts_tokens_and_padded_rows():
    exp = vlac.load(TINY, overrides=["moe.capacity_factor=null"])
    g = vlac.lower(exp)
    prof = Search(exp, exp.cluster, g).model.p
    blocks = [p for p in prof.profiles if "moe_permute" in p.mem_kernels]
    assert blocks
    for p in blocks:
        rows = next(gm.m for gm in p.gemms if gm.expert)  # the padded rows' bound, per sequence
        moved = 2 * (rows / exp.moe.top_k + rows) * exp.backbone.hidden * g.dtype_bytes
        assert sum(p.mem_kernels["moe_permute"]) == pytest.approx(moved)
        assert sum(p.mem_kernels["moe_unpermute"]) == pytest.approx(moved)
