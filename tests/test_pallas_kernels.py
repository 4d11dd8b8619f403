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
