"""The pure-Python parts of benchmarks/gpu_check.py (the GPU itself is checked by running
benchmarks/gpu_check.sh on a CUDA machine)."""

import importlib.util
import json
from pathlib import Path

import pytest

import vlac

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_the_single_gpu_variant_keeps_the_flagship_widths_and_fits_one_gpu():
    exp = vlac.load(gpu_check.FLAGSHIP, gpu_check.variant_overrides(4, 4, 4096, True, "h100-sxm", 25))
    full = vlac.load(gpu_check.FLAGSHIP)
    assert (exp.backbone.hidden, exp.backbone.heads, exp.moe.experts) == (full.backbone.hidden, full.backbone.heads,
                                                                         full.moe.experts)
    assert exp.backbone.layers == 4 and exp.cluster.world_size == 1 and exp.train.total_steps == 25
    plan = vlac.plan(exp, pin={"dp": 1, "tp": 1, "pp": 1, "ep": 1, "cp": 1})
    assert plan.feasible and plan.to_json()["plan"]["fp8"]
    assert plan.to_json()["predicted"]["peak_memory_gb"] < 80


def test_summary_divides_measured_by_predicted():
    plan = {"predicted": {"step_time_s": 0.5, "tokens_per_s": 32768.0, "mfu": 0.4, "peak_memory_gb": 40.0},
            "model": {"model_flops_per_token": 1e9}}
    row = gpu_check.summarize("fp8", plan, [0.9, 0.6, 0.55], 50e9, 16384, 1e15, "transformer_engine")
    m, q = row["measured"], row["ratio_measured_over_predicted"]
    assert m["step_time_s"] == 0.6  # the median, robust to a slow first timed step
    assert m["tokens_per_s"] == pytest.approx(16384 / 0.6)
    assert m["mfu"] == pytest.approx(1e9 * 16384 / (0.6 * 1e15))
    assert q["step_time"] == pytest.approx(1.2) and q["peak_memory"] == pytest.approx(1.25)
    table = gpu_check.render_markdown([row], "NVIDIA H200")
    assert "| fp8 | transformer_engine | 27,307 |" in table and "1.20" in table
    json.dumps(row)  # the results file is plain JSON


def test_preset_follows_the_device_name():
    assert gpu_check.gpu_preset("NVIDIA H200") == "h200"
    assert gpu_check.gpu_preset("NVIDIA H100 80GB HBM3") == "h100-sxm"


def test_without_cuda_it_says_so_and_exits_2(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main(["--steps", "1"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
