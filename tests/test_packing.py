"""Packed batches and rolling windows (jaxmap/batching.py, the engine's use of them)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import save_random_model, tiny_llama_config
from jaxmap.batching import attention_blocks, choose_plan, plan_packed, split_texts
from jaxmap.errors import JaxmapError


def realistic_lengths(count: int, seed: int = 0) -> np.ndarray:
    """Token counts spread like chunked documents: log-normal, 20 to 1,000 tokens."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(180), 0.6, count), 20, 1000).astype(np.int64)


def assert_packed_exactly(plan, sizes):
    """Every piece in exactly one row, in order, without overlap, within its row's width."""
    seen = np.concatenate([b.indices for b in plan.batches])
    assert sorted(seen) == list(range(len(sizes)))
    for batch in plan.batches:
        assert batch.row_of.max() < batch.rows
        for row in range(batch.rows):
            in_row = batch.row_of == row
            starts = batch.offsets[in_row]
            ends = starts + sizes[batch.indices[in_row]]
            assert (starts[1:] >= ends[:-1]).all() and (np.diff(starts) > 0).all()
            assert not len(ends) or ends[-1] <= batch.length + 1


def test_packing_places_every_piece_once_without_overlap_and_wastes_little():
    sizes = realistic_lengths(2000)
    plan = plan_packed(sizes, 1024, batch_tokens=8192)
    assert_packed_exactly(plan, sizes)
    assert plan.padding_fraction < 0.03, plan.padding_fraction
    assert len(plan.shapes) == 1
    # Rows spread evenly over batches: fewer than one empty row per batch.
    empty_rows = sum(b.rows - len(set(b.row_of.tolist())) for b in plan.batches)
    assert empty_rows < len(plan.batches)


def test_narrow_rows_take_the_short_pieces_left_over_and_cut_attention():
    rng = np.random.default_rng(3)
    sizes = np.concatenate([rng.integers(20, 120, 1500), rng.integers(800, 1025, 100)])
    wide = plan_packed(sizes, 1024, batch_tokens=8192)
    mixed = plan_packed(sizes, 1024, batch_tokens=8192, narrow=256)
    assert_packed_exactly(mixed, sizes)
    assert {length for _, length in mixed.shapes} == {1024, 256} and len(mixed.shapes) == 2
    for batch in mixed.batches:
        if batch.length == 256:
            assert (sizes[batch.indices] <= 257).all()
    # The wide rows are filled before any narrow row opens: about as little padding, and far
    # fewer score-matrix entries (rows x width^2).
    assert mixed.padding_fraction < wide.padding_fraction + 0.02
    squares = lambda plan: sum(b.rows * b.length**2 for b in plan.batches)  # noqa: E731
    assert squares(mixed) < 0.75 * squares(wide)
    with pytest.raises(JaxmapError, match="narrow rows"):
        plan_packed(sizes, 1024, batch_tokens=8192, narrow=1024)


def test_packing_beats_buckets_on_padding_and_shapes():
    sizes = realistic_lengths(500, seed=1)
    chosen = choose_plan(sizes, 8192, 2047, position_flops=1e6, score_flops=1e3, block_for=lambda n: 64)
    buckets = choose_plan(sizes, 8192, 2047, 1e6, 1e3, lambda n: 64, packing="buckets")
    assert chosen.name.startswith("packed"), chosen
    assert chosen.plan.padding_fraction < buckets.plan.padding_fraction
    assert len(chosen.plan.shapes) < len(buckets.plan.shapes)
    assert set(chosen.estimates) >= {"buckets", chosen.name}


def test_buckets_win_where_one_long_piece_would_widen_every_row():
    """Many short texts and one long one: packed rows as wide as the long text cost attention
    blocks across the row's pieces, and the estimate says so when scores are expensive."""
    sizes = np.array([30] * 40 + [2000])
    choice = choose_plan(sizes, 4096, 2047, position_flops=1.0, score_flops=1e6, block_for=lambda n: 64)
    assert choice.name == "buckets", choice.estimates


def test_attention_blocks_count_only_blocks_within_pieces():
    plan = plan_packed(np.array([64, 64, 64, 64]), 255, batch_tokens=255)
    (batch,) = plan.batches
    # Four pieces of exactly one block each: only the diagonal blocks are computed.
    assert attention_blocks(batch, np.array([64] * 4), 64) == 4
    one = plan_packed(np.array([256]), 255, batch_tokens=255).batches[0]
    assert attention_blocks(one, np.array([256]), 64) == 10  # 4 blocks: the causal triangle


@pytest.mark.parametrize("context,stride", [(8, 4), (8, 1), (8, 7), (5, 3)])
def test_rolling_windows_score_every_token_once_with_enough_context(context, stride):
    lengths = np.array([1, 2, 5, context, context + 1, 3 * context + 2, 40])
    pieces = split_texts(lengths, context, "rolling", stride)
    for text, length in enumerate(lengths):
        mine = np.flatnonzero(pieces.text == text)
        targets = np.concatenate([
            np.arange(pieces.start[p] + pieces.first_target[p], pieces.stop[p]) for p in mine
        ]) if len(mine) else np.zeros(0, int)
        # Token 0 (the start token) is context only; every other token is scored exactly once.
        assert sorted(targets) == list(range(1, length)) if length > 1 else not len(targets)
        for p in mine:
            assert pieces.sizes[p] <= context
            if pieces.start[p] > 0:  # a later window: its targets see at least context - stride
                assert pieces.first_target[p] >= context - stride
        if length > context:
            assert pieces.stop[mine[-1]] == length and pieces.sizes[mine[-1]] == context


def test_truncation_keeps_the_first_context_tokens():
    pieces = split_texts(np.array([3, 50]), 8, "truncate")
    assert pieces.sizes.tolist() == [3, 8] and pieces.scored.tolist() == [2, 7]


@pytest.mark.parametrize("policy,stride,message", [
    ("sliding", None, "unknown long-text policy"),
    ("rolling", 8, "stride must be between 1 and 7"),
    ("rolling", 0, "stride must be between 1 and 7"),
])
def test_bad_long_text_options_say_what_is_wrong(policy, stride, message):
    with pytest.raises(JaxmapError, match=message):
        split_texts(np.array([20]), 8, policy, stride)


def reference_rolling(directory, ids: list[int], context: int, stride: int) -> float:
    """transformers on each window alone, summing the targets no earlier window scored."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    total, scored_until, begin = 0.0, 1, 0
    while True:
        end = min(begin + context, len(ids))
        window = ids[begin:end]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([window])).logits[0].double(), -1)
        for target in range(max(scored_until, begin + 1), end):
            total += float(logprobs[target - begin - 1, ids[target]])
        if end == len(ids):
            return total
        scored_until = end
        begin = min(begin + stride, len(ids) - context)


@pytest.mark.parametrize("packing", ["pack", "buckets"])
def test_rolling_windows_match_transformers_window_by_window(tmp_path, packing):
    from jaxmap.engine import load_model, score_tokens
    from jaxmap.tokenization import TokenizedTexts

    context, stride = 32, 12
    directory = save_random_model(
        tmp_path / "model", tiny_llama_config(max_position_embeddings=context), seed=5
    )
    rng = np.random.default_rng(2)
    sequences = [rng.integers(0, 300, size=n).tolist() for n in (10, 32, 33, 70, 101)]
    model = load_model(str(directory))
    scores = score_tokens(
        model, TokenizedTexts.from_sequences(sequences), batch_tokens=128, progress=False,
        long_texts="rolling", stride=stride, packing=packing, keep_token_logprobs=True,
    )
    expected = [reference_rolling(directory, ids, context, stride) for ids in sequences]
    np.testing.assert_allclose(scores.loglik, expected, atol=1e-3)
    assert scores.ntokens.tolist() == [n - 1 for n in (10, 32, 33, 70, 101)]
    assert not scores.truncated.any() and scores.stats["long_texts"] == "rolling"
    assert len(scores.token_logprobs) == scores.ntokens.sum()
    truncated = score_tokens(model, TokenizedTexts.from_sequences(sequences), progress=False)
    assert truncated.truncated.tolist() == [False, False, True, True, True]
    # The first window is the truncated text: later windows only add tokens.
    assert truncated.ntokens.tolist() == [9, 31, 31, 31, 31]


def test_store_records_the_long_text_policy_and_refuses_another(tmp_path, text_file):
    import jaxmap
    from jaxmap.errors import StoreError

    directory = save_random_model(tmp_path / "model", tiny_llama_config(max_position_embeddings=24), seed=1)
    other = save_random_model(tmp_path / "other", tiny_llama_config(max_position_embeddings=24), seed=2)
    out = tmp_path / "store.h5"
    store = jaxmap.score([str(directory)], text_file, out=out, long_texts="rolling", progress=False)
    assert store.settings["long_texts"] == "rolling"
    assert store.model_meta[0]["long_texts"] == "rolling" and store.model_meta[0]["stride"] == 12
    assert not store.truncated.any() and store.ntokens.max() > 23
    with pytest.raises(StoreError, match="long_texts"):
        jaxmap.score([str(other)], text_file, out=out, progress=False)
