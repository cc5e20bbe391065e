"""Shared helpers of the runtime model-library tests: the examples and a CPU training loop."""

from pathlib import Path

import torch

import vlac

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
TINY = ROOT / "examples" / "tiny_vla.yaml"


def tiny_profile(path: Path):
    """The example's CPU-sized experiment: its `tiny` profile, or the spec itself when it is tiny already."""
    data = vlac.spec.read_mapping(path)
    return vlac.load(path, profile="tiny" if "tiny" in (data.get("profiles") or {}) else None)


def train_steps(exp, steps: int, batch: int | None = None) -> list[float]:
    """Plain AdamW steps of the Objective on the experiment's data; the losses per step."""
    from vlac.runtime.model import build_model
    from vlac.runtime.tokenizers.vq import single_thread

    with single_thread():  # tiny models: one core beats two, and by far on a shared machine
        return _train(build_model(exp), exp, steps, batch)


def _train(model, exp, steps, batch):
    from vlac.runtime.data import SyntheticData
    from vlac.runtime.losses import Objective

    objective = Objective(model, exp)
    data = SyntheticData(exp)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=exp.optimizer.lr, weight_decay=0.0)
    g = batch or exp.train.global_batch
    losses = []
    for step in range(steps):
        b = data.micro_batch(step, 0, g, data.global_loss_tokens(step), torch.device("cpu"))
        out = objective(b)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses
