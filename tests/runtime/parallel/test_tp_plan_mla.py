"""train.py's TP_PLAN of a latent-attention model: the up-projections column-wise, wo row-wise,
and the down path (attn.latent.*) absent, i.e. replicated; the emitted literal is that plan."""

from __future__ import annotations

import ast
from pathlib import Path

import vlac
from vlac.runtime.model import build_model
from vlac.runtime.parallel.tensor_parallel import default_tp_plan

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MLA = ["parallelism.dp=1", "parallelism.tp=2", "parallelism.sequence_parallel=true", "cluster.gpus_per_node=2",
       "backbone.kv_heads=null",
       "backbone.mla={q_lora_rank: 32, kv_lora_rank: 16, qk_rope_head_dim: 8, qk_nope_head_dim: 8, v_head_dim: 16}"]


def test_the_down_path_stays_out_of_the_plan_and_the_up_projections_split(tmp_path):
    exp = vlac.load(EXAMPLES / "dense_text_1b.yaml", MLA, "tiny")
    default = default_tp_plan(build_model(exp, "meta"), sequence_parallel=True)
    attn = {k: v for k, v in default.items() if k.startswith("attn.")}
    assert attn == {"attn.wq_up": "colwise", "attn.wkv_up": "colwise", "attn.wo": "rowwise"}
    program = vlac.emit(exp, vlac.plan(exp), tmp_path / "tp2")
    tree = ast.parse((program / "train.py").read_text())
    literal = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", "") == "TP_PLAN")
    assert literal == default
