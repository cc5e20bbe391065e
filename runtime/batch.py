"""The batch contract between data, model and compiler: which keys, which shapes."""

from __future__ import annotations

import torch

from vlac.spec import Experiment


def batch_keys(exp: Experiment) -> list[str]:
    keys = ["tokens", "targets", "target_modality", "span", "prefix", "loss_norm"]
    for name, m in exp.modalities.items():
        if m.kind == "continuous":
            keys += [f"{name}.features", f"{name}.index", f"{name}.present"]
    return keys


def example_batch(exp: Experiment, micro_batch: int, seq_len: int | None = None,
                  device: str | torch.device = "meta", dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A batch of the right shapes and dtypes (zeros), for tracing and shape propagation."""
    s = seq_len or exp.train.seq_len
    b = micro_batch
    long = dict(dtype=torch.long, device=device)
    batch = {
        "tokens": torch.zeros(b, s, **long),
        "targets": torch.zeros(b, s, **long),
        "target_modality": torch.zeros(b, s, **long),
        "span": torch.zeros(b, s, **long),
        "prefix": torch.zeros(b, s, **long),
        "loss_norm": torch.ones((), dtype=torch.float32, device=device),
    }
    for name, m in exp.modalities.items():
        if m.kind == "continuous":
            batch[f"{name}.features"] = torch.zeros(b, m.tokens, m.input_dim, dtype=dtype, device=device)
            batch[f"{name}.index"] = torch.zeros(b, m.tokens, **long)
            batch[f"{name}.present"] = torch.zeros(b, m.tokens, dtype=dtype, device=device)
    return batch
