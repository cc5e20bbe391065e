"""Train the tiny VLA on real data on a CPU and report held-out accuracies against chance.

Data (no downloads): scikit-learn's bundled 8x8 handwritten digits with captions ("seven") and
questions ("odd? yes", "digit? seven", "big? no"), the same digits generated from their caption,
and a scripted controller balancing gymnasium's CartPole at a commanded position ("keep left")
with its next forces as 4 binned actions. Images become VQ codes of a tokenizer fitted on the
training images. The script trains examples/tiny_vla.yaml's model on this mixture, then on
held-out samples generates captions, answers and actions greedily, probes how much answers rely
on the image (accuracy with another sample's image), and writes a picture of generated digits.

    .venv/bin/python scripts/demo_vla.py [--steps 600] [--out runs/demo_vla]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

MIXTURE = ("data.mixture=["
           "{name: digit-captions, weight: 0.4, modalities: [image, text], generator: digits},"
           "{name: digit-drawing, weight: 0.2, modalities: [text, image], generator: digits},"
           "{name: cartpole, weight: 0.4, modalities: [text, image, action], generator: cartpole}]")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600, help="optimiser steps")
    ap.add_argument("--batch", type=int, default=32, help="sequences per step")
    ap.add_argument("--eval-samples", type=int, default=300, help="held-out samples to evaluate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (1: a model this small is faster on one core, and much faster on a busy machine)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo_vla", help="where the picture and report go")
    args = ap.parse_args(argv)

    import vlac
    from vlac.runtime.data import SyntheticData
    from vlac.runtime.datasets.digits import QUESTIONS
    from vlac.runtime.diagnostics import modality_reliance, moe_metrics
    from vlac.runtime.evaluate import evaluate, majority_bin_rate
    from vlac.runtime.features import fitted_vq
    from vlac.runtime.losses import Objective
    from vlac.runtime.model import build_model
    from vlac.runtime.optim import build_optimizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    exp = vlac.load(ROOT / "examples" / "tiny_vla.yaml", [
        MIXTURE, f"data.seed={args.seed}", f"train.seed={args.seed}", "optimizer.lr=2.0e-3",
        "backbone.layers=4", "backbone.hidden=128", "backbone.heads=4", "backbone.kv_heads=2",
        "backbone.ffn_hidden=256", "moe.expert_hidden=128", f"train.global_batch_tokens={48 * args.batch}"])
    t0 = time.perf_counter()
    train, held_out = SyntheticData(exp, "train"), SyntheticData(exp, "eval")
    vq, vq_report = fitted_vq(exp, "image", train.generators)
    print(f"VQ tokenizer: reconstruction MSE {vq_report.reconstruction_mse:.4f}, codebook usage "
          f"{vq_report.usage:.0%}, entropy {vq_report.entropy:.2f} nats (max {np.log(exp.modalities['image'].codebook_size):.2f}), "
          f"resampled dead codes {vq_report.resampled}  [{time.perf_counter() - t0:.1f}s]")

    model = build_model(exp)
    objective = Objective(model, exp)
    opt = build_optimizer(model, exp)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * (0.1 + 0.9 * (1 - s / args.steps)))
    t1 = time.perf_counter()
    for step in range(args.steps):
        batch = train.micro_batch(step, 0, args.batch, 1.0, torch.device("cpu"))
        batch["loss_norm"] = (batch["targets"] >= 0).sum().float()  # one micro-batch: the global count
        out = objective(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            mods = {n: float(out["modality_loss_sum"][i].detach() / out["modality_count"][i].clamp_min(1))
                    for i, n in enumerate(exp.modalities)}
            moe = moe_metrics(out)
            print(f"step {step:4d}  loss {float(out['loss'].detach()):.3f}  " + "  ".join(f"{k} {v:.3f}" for k, v in mods.items())
                  + f"  dropped {moe['dropped_fraction']:.3f}  router entropy {np.mean(moe['router_entropy']):.2f}",
                  flush=True)
    train_s = time.perf_counter() - t1

    model.eval()
    options = {q: (10 if q == "digit?" else 2) for q in QUESTIONS}
    rep = evaluate(model, held_out, args.eval_samples, "text", "action", options)
    majority, _ = majority_bin_rate(held_out, "action", 400)
    summary = rep.summary(exp.modalities["action"].bins, majority)
    summary["reliance"] = _reliance(model, held_out, exp, modality_reliance)
    summary["train_seconds"] = round(train_s, 1)
    print("\nheld-out samples (generated greedily):")
    for prompt, ref, got in rep.examples[:6]:
        print(f"  [{prompt or 'caption'}] reference {ref!r:10} generated {got!r}")
    print("\nheld-out accuracy (chance in brackets)")
    for key, chance in (("caption_accuracy", "caption_chance"), ("answer_accuracy", "answer_chance"),
                        ("action_accuracy", "action_chance")):
        if key in summary:
            print(f"  {key:24} {summary[key]:6.1%}   [{summary[chance]:.1%}]")
    if "action_within_one_bin" in summary:
        print(f"  {'action_within_one_bin':24} {summary['action_within_one_bin']:6.1%}   "
              f"[most frequent bin: {summary['action_majority_baseline']:.1%}]")
    r = summary["reliance"]
    print(f"  image reliance: first answer token {r['accuracy']:.1%} correct with the true image, "
          f"{r['accuracy_swapped']:.1%} with another sample's image")

    args.out.mkdir(parents=True, exist_ok=True)
    picture = args.out / "generated_digits.png"
    write_png(picture, digit_sheet(model, held_out, vq))
    print(f"\npicture: {picture} (rows: a held-out digit, its VQ reconstruction, a digit generated from its caption)")
    (args.out / "report.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def _reliance(model, data, exp, probe) -> dict[str, float]:
    """Accuracy of the first answer/caption token (the one the image decides; the rest follow
    from it) on held-out digit samples, with the true image and with another sample's."""
    samples = []
    i = 0
    while len(samples) < 64 and i < 2000:
        s = data.sample(i)
        i += 1
        if s.episode.image is not None and s.answer_start > 0 and s.modality[1] == list(exp.modalities).index("image"):
            samples.append(s)
    batch = data.collate(samples, 1.0, torch.device("cpu"))
    pos = torch.arange(batch["tokens"].size(1))
    starts = torch.tensor([s.answer_start for s in samples]).unsqueeze(1)
    answer = pos == starts - 1
    return probe(model, batch, exp, "image", answer)


@torch.no_grad()
def digit_sheet(model, data, vq) -> np.ndarray:
    """One column per digit 0-9: a held-out image, its VQ reconstruction, and a digit generated
    from the caption alone (image tokens sampled at temperature 0.7, decoded by the VQ decoder)."""
    from vlac.runtime.datasets.synthetic import CLASS_NAMES
    from vlac.runtime.evaluate import first_position, prompt_batch
    from vlac.runtime.features import resize
    from vlac.runtime.generate import generate

    spec = data.exp.modalities["image"]
    names = list(data.exp.modalities)
    columns, gen = {}, torch.Generator().manual_seed(0)
    i = 0
    while len(columns) < 10 and i < 5000:
        s = data.sample(i)
        i += 1
        ep = s.episode
        if ep.image is None or ep.label in columns or s.modality[1] != names.index("text") or ep.prompt:
            continue
        at = first_position(s, data.layout.special("<boi>"), names.index("image"))
        if at < 0 or ep.answer != CLASS_NAMES[ep.label]:
            continue
        codes = generate(model, prompt_batch(data, s, at + 1), spec.tokens, modality="image",
                         temperature=0.7, top_k=8, generator=gen)[0] - data.layout.range_of("image").offset
        original = torch.as_tensor(resize(ep.image, spec.image_size, spec.channels))[None]
        columns[ep.label] = [original[0, 0], vq.decode(vq.encode(original))[0, 0], vq.decode(codes[None])[0, 0]]
    rows = []
    for r in range(3):
        rows.append(np.concatenate([np.pad(columns[d][r].numpy(), 1) for d in sorted(columns)], axis=1))
    return np.concatenate(rows, axis=0)


def write_png(path: Path, image: np.ndarray, scale: int = 8) -> None:
    """Grayscale [H, W] in [0, 1] as an 8-bit PNG, each pixel a scale x scale block."""
    img = np.kron(np.clip(image, 0, 1), np.ones((scale, scale)))
    data = (img * 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in data)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", data.shape[1], data.shape[0], 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
