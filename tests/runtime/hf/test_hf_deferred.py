"""backbone.from_hf with deferred construction, in the emitted train.py's order: the model is built
with its weights on the meta device, parallelize materialises them (random initial values), then
trainer.resume loads the checkpoint into the materialised weights: vlac's logits are then
transformers' (fp32, 1e-5), not the drawn initial values."""

import torch

import vlac
from vlac.runtime.distributed import DistEnv
from vlac.runtime.model import build_model
from vlac.runtime.optim import build_optimizer, build_scheduler
from vlac.runtime.parallel import parallelize
from vlac.runtime.trainer import Trainer

from hf_models import experiment, reference_logits, save_tiny, vlac_text_logits

IDS = torch.tensor([[5, 17, 3, 90, 42, 0, 7, 64, 11, 2, 33, 95]])


def test_pretrained_weights_are_loaded_into_the_materialised_model(tmp_path):
    folder = save_tiny("qwen2", tmp_path / "qwen2")  # tied embeddings: one weight under two names
    exp = experiment(folder)
    plan = vlac.plan(exp).to_json()
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    layout = parallelize(build_model(exp, "cpu", deferred=True), exp, plan, env)
    assert layout.materialized_bytes > 0
    want = reference_logits(folder, IDS)
    drawn = vlac_text_logits(layout.model, exp, IDS)
    assert not torch.allclose(drawn, want, atol=1e-2)
    optimizer = build_optimizer(layout.model, exp)
    trainer = Trainer(exp, plan, layout, optimizer, build_scheduler(optimizer, exp), env, tmp_path / "run")
    assert trainer.resume() == 0  # no checkpoint yet: a fresh run starts from the pretrained backbone
    torch.testing.assert_close(vlac_text_logits(layout.model, exp, IDS), want, atol=1e-5, rtol=0)
    assert layout.model.head.weight is layout.model.embed.weight
