"""The real-data demo: trains the tiny VLA on digits and CartPole and must beat chance on held-out
samples (the default 600 steps, evaluated on 150 held-out samples)."""

import importlib.util

import pytest

from runtime_helpers import ROOT


def _demo():
    spec = importlib.util.spec_from_file_location("demo_vla", ROOT / "scripts" / "demo_vla.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_png_writer(tmp_path):
    import numpy as np

    demo = _demo()
    path = tmp_path / "x.png"
    demo.write_png(path, np.linspace(0, 1, 12).reshape(3, 4), scale=2)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"IHDR" in data and data.endswith(b"IEND\xaeB`\x82")


@pytest.mark.slow
def test_demo_beats_chance_on_held_out_samples(tmp_path):
    # the demo's default length: at 300 steps the caption and answer accuracies sit at the margin
    # (measured 2.6x and 1.0x chance on this machine, 7.7x and 2.1x at 600), so the run decided
    # the outcome, not the model
    r = _demo().main(["--steps", "600", "--eval-samples", "150", "--out", str(tmp_path)])
    assert r["caption_accuracy"] > 3 * r["caption_chance"]
    assert r["answer_accuracy"] > r["answer_chance"] + 0.15
    assert r["action_accuracy"] > 5 * r["action_chance"]
    assert r["action_within_one_bin"] > r["action_majority_baseline"] + 0.2
    assert r["reliance"]["reliance"] > 0.1  # answers depend on the image
    assert (tmp_path / "generated_digits.png").stat().st_size > 1000 and (tmp_path / "report.json").exists()
