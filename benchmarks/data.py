"""The packed loader against what a plan needs: packed tokens/s of one loader core, packing
efficiency (the non-pad fraction of the rows), and the ratio of the first to the tokens/s the
plan trains per GPU (from the plan's predicted throughput and world size, never typed in).

The data are the small real datasets of vlac.data.samples (digits as WebDataset shards, CartPole
episodes in LeRobot format, a text corpus), prepared by `vlac prepare` at the planned spec's
seq_len, read by the tiny VLA's tokenizers. One core: the rows are built in the calling thread
with torch on one thread, which is the work of the loader's background thread.

Run: python benchmarks/data.py [--spec SPEC] [--rows N] [--out benchmarks/results/data.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny_vla.yaml"
FLAGSHIP = ROOT / "examples" / "vla_10b_moe_h100.yaml"


def tiny_on_samples(folder: Path, seq_len: int):
    """The tiny VLA reading the three sample datasets (written under `folder`) at `seq_len`."""
    import vlac
    from vlac.data.samples import write_cartpole_lerobot, write_digits_webdataset, write_text_corpus
    from vlac.spec import read_mapping

    jsonl, _ = write_text_corpus(folder / "text", rows=600)
    digits = write_digits_webdataset(folder / "wds", shards=8, per_shard=200)  # most of the 1,797 digits
    robot = str(write_cartpole_lerobot(folder / "robot", episodes=12, steps=48))
    spec = read_mapping(TINY)
    spec.pop("profiles", None)
    spec["backbone"]["context_length"] = seq_len
    spec["train"] = {**spec["train"], "seq_len": seq_len, "global_batch_tokens": 8 * seq_len}
    spec["parallelism"] = {**spec.get("parallelism", {}), "microbatch_size": 4}
    spec["data"] = {"prepared": str(folder / "prepared"), "on_bad_sample": "skip", "mixture": [
        {"name": "digits", "weight": 1.0, "modalities": ["image", "text"],
         "source": {"kind": "webdataset", "pattern": digits, "fields": {"image": "png", "text": "txt"}}},
        {"name": "robot", "weight": 1.0, "modalities": ["text", "image", "action"],
         "source": {"kind": "lerobot", "root": robot,
                    "fields": {"text": "task", "image": "observation.images.top", "action": "action"}}},
        {"name": "corpus", "weight": 0.5, "modalities": ["text"],
         "source": {"kind": "table", "pattern": jsonl, "fields": {"text": "text"}}}]}
    return vlac.load(spec)


def plan_need(spec: Path) -> dict:
    """Tokens/s the plan of `spec` trains in all, per GPU and per data-parallel replica."""
    import vlac

    exp = vlac.load(spec)
    chosen = vlac.plan(exp).chosen
    dp = chosen.layout.dp
    return {"spec": str(spec.relative_to(ROOT) if spec.is_relative_to(ROOT) else spec), "seq_len": exp.train.seq_len,
            "layout": chosen.layout.short(), "world": chosen.world, "data_parallel": dp,
            "step_time_s": chosen.step_time_s, "tokens_per_s": chosen.tokens_per_s,
            "tokens_per_s_per_gpu": chosen.tokens_per_s / chosen.world, "tokens_per_s_per_replica": chosen.tokens_per_s / dp}


def measure_loader(exp, rows: int) -> dict:
    """Build `rows` packed rows on one core; positions/s, real tokens/s and the non-pad fraction."""
    import torch

    from vlac.data.loader import PackedData

    torch.set_num_threads(1)
    data = PackedData(exp)
    try:
        data._build(0, 8, torch.float32)  # warm-up: memory maps, the first epochs' packing plans
        t0 = time.perf_counter()
        built, first = 0, 8
        while built < rows:
            batch = data._build(first, 8, torch.float32)
            data._account(batch.pop("_rows"))
            built, first = built + 8, first + 8
        seconds = time.perf_counter() - t0
        report = data.report()
    finally:
        data.close()
    positions = data.rows * exp.train.seq_len
    return {"rows": data.rows, "seconds": seconds, "tokens_per_s_per_core": positions / seconds,
            "real_tokens_per_s_per_core": report["packing_efficiency"] * positions / seconds,
            "packing_efficiency": report["packing_efficiency"], "tokens_per_source": report["tokens_per_source"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=FLAGSHIP, help="the spec whose plan sets the need and seq_len")
    ap.add_argument("--rows", type=int, default=256, help="packed rows to build (after 8 of warm-up)")
    ap.add_argument("--workers", type=int, default=2, help="vlac prepare worker processes")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data.json")
    args = ap.parse_args(argv)
    from vlac.data.prepare import prepare

    need = plan_need(args.spec)
    with tempfile.TemporaryDirectory() as tmp:
        exp = tiny_on_samples(Path(tmp), need["seq_len"])
        t0 = time.perf_counter()
        prepared = prepare(exp, workers=args.workers)
        prepare_s = time.perf_counter() - t0
        loader = measure_loader(exp, args.rows)
    tokens = sum(c["tokens"] for c in prepared.components.values())
    result = {"plan": need, "loader": loader,
              "prepare": {"seconds": prepare_s, "workers": args.workers, "tokens": tokens, "tokens_per_s": tokens / prepare_s},
              "ratio_to_need_per_gpu": loader["tokens_per_s_per_core"] / need["tokens_per_s_per_gpu"],
              "loader_cores_per_gpu": need["tokens_per_s_per_gpu"] / loader["tokens_per_s_per_core"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"plan {need['spec']} ({need['layout']}, {need['world']} GPUs): {need['tokens_per_s_per_gpu']:,.0f} tokens/s "
          f"per GPU at seq_len {need['seq_len']}")
    print(f"loader: {loader['tokens_per_s_per_core']:,.0f} packed tokens/s per core "
          f"({loader['real_tokens_per_s_per_core']:,.0f} non-pad), packing efficiency {loader['packing_efficiency']:.1%}, "
          f"{loader['rows']} rows")
    print(f"ratio to the need per GPU: {result['ratio_to_need_per_gpu']:.2f} "
          f"({result['loader_cores_per_gpu']:.2f} loader cores per GPU); prepare: {result['prepare']['tokens_per_s']:,.0f} "
          f"tokens/s with {args.workers} workers; wrote {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
