"""Packed rows train each document as if it were alone: a row of two documents (and padding) gives
each document exactly the logits it gets as its own row, with learned and rotary positions and
segment memory, on one process, through pipeline stages, and on the context-parallel seams (a
rank's rows of a block)."""

import contextlib
import functools

import pytest
import torch

import vlac
from vlac.runtime.batch import example_batch
from vlac.runtime.masks import document_positions
from vlac.runtime.model import build_model
from vlac.spec import read_mapping

from runtime_helpers import TINY

LENGTHS = (19, 23)  # two documents, then padding, in a row of seq_len 48
SEQ_LEN = 48


@functools.cache
def packed_experiment(positions: str = "rope", stream: str = "shared", segment: int = 0, dropless: bool = False):
    """The tiny example, text only, trained from a table source: its batches carry document ids
    (the source is never read here). Dense, or with dropless MoE: capacity-limited experts share
    their slots among every token of a micro-batch, packed or not, so only dropless routing
    leaves each document's outputs independent of its neighbours."""
    spec = read_mapping(TINY)
    moe = spec.pop("moe")
    if dropless:
        spec["moe"] = {**moe, "capacity_factor": None}
    spec["modalities"] = {"text": spec["modalities"]["text"]}
    spec["losses"] = {"ar": {"weight": 1.0}}
    spec["backbone"]["positions"] = positions
    spec["fusion"] = {"stream": stream}
    if segment:
        spec["memory"] = {"segment_length": segment, "memory_tokens": 2}
    spec["data"] = {"mixture": [{"name": "corpus", "weight": 1.0, "modalities": ["text"],
                                 "source": {"kind": "table", "pattern": "corpus/*.jsonl", "fields": {"text": "text"}}}]}
    return vlac.load(spec)


def documents(exp, seed: int = 0) -> list[torch.Tensor]:
    text = exp.vocab_layout().range_of("text")
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(text.offset, text.offset + text.size, (n,), generator=g) for n in LENGTHS]


def row(exp, docs: list[torch.Tensor], seq_len: int) -> dict[str, torch.Tensor]:
    """One row holding `docs` back to back (document ids 1, 2, ...), padded to seq_len (id 0)."""
    batch = example_batch(exp, 1, seq_len, device="cpu")
    used = sum(len(d) for d in docs)
    batch["tokens"][0, :used] = torch.cat(docs)
    batch["modality"][0, used:] = -1
    batch["document"][0] = torch.cat([torch.full((len(d),), i + 1) for i, d in enumerate(docs)]
                                     + [torch.zeros(seq_len - used, dtype=torch.long)])
    return batch


def assert_each_document_as_alone(logits_of, exp) -> None:
    """logits_of(batch) -> [1, S, V]; the packed row's slice of each document equals its own row's."""
    docs = documents(exp)
    packed = logits_of(row(exp, docs, SEQ_LEN))
    at = 0
    for doc in docs:
        alone = logits_of(row(exp, [doc], len(doc)))
        torch.testing.assert_close(packed[:, at:at + len(doc)], alone, rtol=1e-5, atol=1e-5)
        at += len(doc)


def test_document_positions_restart_where_each_document_begins():
    doc = torch.tensor([[1, 1, 1, 2, 2, 0, 0], [3, 3, 3, 3, 3, 3, 3]])
    assert document_positions(doc).tolist() == [[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6]]


@pytest.mark.parametrize("positions, stream, segment, dropless", [
    ("learned", "shared", 0, False), ("rope", "shared", 0, False), ("rope", "dual", 0, False),
    ("rope", "shared", 8, False), ("rope", "shared", 0, True)])
def test_a_packed_row_gives_each_document_its_logits_alone(positions, stream, segment, dropless):
    exp = packed_experiment(positions, stream, segment, dropless)
    model = build_model(exp).eval()
    with torch.no_grad():
        assert_each_document_as_alone(lambda b: model(b)["logits"], exp)


def test_rope_rotates_the_second_document_from_position_zero():
    """Rotary's invariance to a shift holds only in exact arithmetic, so compare the rotation
    itself: the packed row's second document is rotated as the same tokens at 0 .. n-1."""
    exp = packed_experiment("rope")
    model = build_model(exp).eval()
    attn = model.layers[0].attn
    x = torch.randn(1, SEQ_LEN, exp.backbone.hidden)
    batch = row(exp, documents(exp), SEQ_LEN)
    with torch.no_grad():
        q, k, _ = attn.project(x, 0, model.token_positions(batch))
        a, n = LENGTHS
        q_alone, k_alone, _ = attn.project(x[:, a:a + n])
    assert torch.equal(q[:, a:a + n], q_alone) and torch.equal(k[:, a:a + n], k_alone)


def test_unpacked_batches_and_decoding_keep_positions_along_the_row():
    exp = packed_experiment("rope")
    model = build_model(exp, "meta")
    batch = row(exp, documents(exp), SEQ_LEN)
    assert model.token_positions(batch, start=5) is None  # decoding past the prompt: one document continues
    model.packed = False
    assert model.token_positions(batch) is None


def test_pipeline_stages_give_each_document_its_logits_alone():
    """Two stages of the pipeline's own StageModule, chained in one process: the second stage, which
    did not embed the tokens, rebuilds the per-document positions from the micro-batch."""
    from vlac.runtime.parallel.pipeline import StageModule, model_view

    exp = packed_experiment("rope")
    model = build_model(exp).eval()
    stages = [StageModule(model_view(model, [i], first=i == 0, last=i == 1), i == 0, i == 1, [],
                          contextlib.nullcontext) for i in range(2)]
    seen = []  # the positions the second stage's RoPE rotates at (its logits alone cannot tell:
    # with attention inside documents, RoPE's scores depend on offsets only, up to rounding)
    model.layers[1].attn.rotary.register_forward_pre_hook(lambda _, args: seen.append(args[3]))

    def logits_of(batch):
        return stages[1](stages[0](**batch), **batch)[0]

    batch = row(exp, documents(exp), SEQ_LEN)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(batch), model(batch)["logits"], rtol=0, atol=0)
        assert torch.equal(seen[0], document_positions(batch["document"]))
        assert_each_document_as_alone(logits_of, exp)


@pytest.mark.parametrize("cp", [2, 3])
def test_a_context_parallel_ranks_block_rows_use_the_rows_positions(cp):
    """A decoder block with the cp seams (its inputs hook, RoPE at positions, the keys and values an
    all-gather returns) gives this rank's rows of the whole packed row's block output."""
    from vlac.runtime.parallel.context_parallel import ContextShard, RotaryAtPositions, _block_inputs

    exp = packed_experiment("rope")
    model = build_model(exp).eval()
    block = model.layers[1]
    s, chunk = SEQ_LEN, SEQ_LEN // (2 * cp)  # 2*cp chunks of the row
    batch = row(exp, documents(exp), s)
    x = torch.randn(1, s, exp.backbone.hidden)
    mask, positions = model.attention_mask(batch), model.token_positions(batch)
    with torch.no_grad():
        whole = block(x, mask, None, positions)[0]
        _, k_all, v_all = block.attn.project(block.attn_norm(x), 0, positions)
        rope = block.attn.rotary
        for rank in range(cp):
            shard = ContextShard(None, cp, rank)
            shard.begin(x)
            lay = shard.layout
            gathered_k, gathered_v = k_all.index_select(1, lay.gathered), v_all.index_select(1, lay.gathered)

            def all_gather(k, v):  # what the cp group's all-gather returns; this rank's own rows must match
                own = slice(rank * 2 * chunk, (rank + 1) * 2 * chunk)
                torch.testing.assert_close(k, gathered_k[:, own], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(v, gathered_v[:, own], rtol=1e-5, atol=1e-6)
                return gathered_k, gathered_v

            hook = block.register_forward_pre_hook(_block_inputs(shard), with_kwargs=True)
            block.attn.kv_gather, block.attn.rotary = all_gather, RotaryAtPositions(rope, shard)
            try:
                rows = block(x.index_select(1, lay.local), mask, None, positions)[0]
            finally:
                hook.remove()
                block.attn.kv_gather, block.attn.rotary = None, rope
            torch.testing.assert_close(rows, whole.index_select(1, lay.local), rtol=1e-5, atol=1e-6)
