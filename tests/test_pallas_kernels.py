"""The hand-written Pallas kernels (kernels/), run in Pallas interpret mode on CPU, against
float64 references and against the pure-JAX kernels the engine uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmap.kernels.fused_logprob import token_logprobs
from jaxmap.kernels.pallas_logprob import pallas_token_logprobs


def reference_logprobs(hidden, unembedding, targets, bias=None, softcap=None):
    logits = np.asarray(hidden, np.float64) @ np.asarray(unembedding, np.float64).T
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    if softcap:
        logits = softcap * np.tanh(logits / softcap)
    top = logits.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return logits[np.arange(len(targets)), targets] - log_norm


@pytest.mark.parametrize(
    "positions, vocab, tile, block_rows",
    [(37, 1000, 256, 16), (64, 1024, 256, 32), (5, 300, 512, 8), (130, 777, 128, 64)],
)
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("with_bias", [False, True])
def test_pallas_logprob_matches_float64_reference(positions, vocab, tile, block_rows, softcap, with_bias):
    keys = jax.random.split(jax.random.key(positions + vocab), 4)
    hidden = jax.random.normal(keys[0], (positions, 24)) * 2
    unembedding = jax.random.normal(keys[1], (vocab, 24))
    targets = jax.random.randint(keys[2], (positions,), 0, vocab)
    bias = jax.random.normal(keys[3], (vocab,)) if with_bias else None
    got = pallas_token_logprobs(
        hidden, unembedding, targets, bias,
        tile=tile, block_rows=block_rows, softcap=softcap, interpret=True,
    )
    expected = reference_logprobs(hidden, unembedding, np.asarray(targets), bias, softcap)
    assert got.shape == (positions,)
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4, rtol=1e-5)


def test_pallas_logprob_agrees_with_the_engine_kernel_and_reads_every_tile():
    keys = jax.random.split(jax.random.key(7), 3)
    hidden = jax.random.normal(keys[0], (48, 32)) * 3
    unembedding = jax.random.normal(keys[1], (2000, 32))
    # Targets in the first, a middle and the last (partial) tile.
    targets = jnp.array([0, 1, 1023, 1024, 1999] * 9 + [5, 6, 7], jnp.int32)
    got = pallas_token_logprobs(hidden, unembedding, targets, tile=512, block_rows=16, interpret=True)
    engine = token_logprobs(hidden, unembedding, targets, tile=512)
    np.testing.assert_allclose(np.asarray(got), np.asarray(engine), atol=1e-4, rtol=1e-6)
    # The normaliser covers the whole vocabulary: dropping the last tile changes the answer.
    truncated = pallas_token_logprobs(
        hidden, unembedding[:1536], jnp.minimum(targets, 1535), tile=512, block_rows=16, interpret=True
    )
    assert np.abs(np.asarray(truncated) - np.asarray(got)).max() > 1e-3


def test_pallas_logprob_bfloat16_weights_accumulate_in_float32():
    keys = jax.random.split(jax.random.key(3), 3)
    hidden = jax.random.normal(keys[0], (16, 64))
    unembedding = jax.random.normal(keys[1], (500, 64)).astype(jnp.bfloat16)
    targets = jax.random.randint(keys[2], (16,), 0, 500)
    got = pallas_token_logprobs(hidden, unembedding, targets, tile=128, block_rows=16, interpret=True)
    rounded_hidden = np.asarray(hidden.astype(jnp.bfloat16).astype(jnp.float32))
    expected = reference_logprobs(rounded_hidden, np.asarray(unembedding.astype(jnp.float32)), np.asarray(targets))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-3)


from jaxmap.kernels.pallas_attention import pallas_flash_attention


def reference_attention(q, k, v, scale, window=0, softcap=None, segments=None, slopes=None):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, heads, length, _ = q.shape
    k = np.repeat(k, heads // k.shape[1], axis=1)
    v = np.repeat(v, heads // v.shape[1], axis=1)
    scores = np.einsum("bhqd,bhkd->bhqk", q * scale, k)
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    query, key = np.arange(length)[:, None], np.arange(length)[None, :]
    if slopes is not None:
        scores = scores + np.asarray(slopes, np.float64)[None, :, None, None] * (key - query)
    visible = np.broadcast_to(key <= query, scores.shape).copy()
    if window:
        visible &= key > query - window
    if segments is not None:
        segments = np.asarray(segments)
        visible &= (segments[:, None, :, None] == segments[:, None, None, :])
    scores = np.where(visible, scores, -np.inf)
    top = scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores - top)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", weights, v)


ATTENTION_CASES = {
    "mha": dict(heads=4, kv_heads=4),
    "gqa-window": dict(heads=4, kv_heads=2, window=5),
    "mqa-softcap": dict(heads=4, kv_heads=1, softcap=2.0),
    "segments": dict(heads=2, kv_heads=1, segments=True),
    "alibi-segments-window": dict(heads=3, kv_heads=3, alibi=True, segments=True, window=7),
}


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_pallas_flash_attention_matches_dense_reference(case):
    options = ATTENTION_CASES[case]
    heads, kv_heads = options["heads"], options["kv_heads"]
    batch, length, head_dim = 2, 45, 8
    keys = jax.random.split(jax.random.key(len(case)), 4)
    q = jax.random.normal(keys[0], (batch, heads, length, head_dim)) * 2
    k = jax.random.normal(keys[1], (batch, kv_heads, length, head_dim)) * 2
    v = jax.random.normal(keys[2], (batch, kv_heads, length, head_dim))
    segments = None
    if options.get("segments"):
        # Three texts of different lengths in row 0, two in row 1.
        segments = np.zeros((batch, length), np.int32)
        segments[0, 12:30], segments[0, 30:] = 1, 2
        segments[1, 20:] = 1
    slopes = 2.0 ** -np.arange(1, heads + 1) if options.get("alibi") else None
    window, softcap, scale = options.get("window", 0), options.get("softcap"), head_dim**-0.5
    got = pallas_flash_attention(
        q, k, v,
        None if segments is None else jnp.asarray(segments),
        None if slopes is None else jnp.asarray(slopes, jnp.float32),
        scale=scale, window=window, softcap=softcap, block_q=16, block_k=8, interpret=True,
    )
    expected = reference_attention(q, k, v, scale, window, softcap, segments, slopes)
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5, rtol=1e-4)
    if segments is not None:
        # A text's outputs do not depend on the text packed before it.
        alone = reference_attention(q[:, :, 12:30], k[:, :, 12:30], v[:, :, 12:30], scale, window, softcap, None,
                                    None if slopes is None else slopes)
        np.testing.assert_allclose(np.asarray(got)[0, :, 12:30], alone[0], atol=2e-5, rtol=1e-4)
