"""The fused vocab-tiled log-prob kernel against a full-logits reference, and a check that the
scoring path never builds a [batch, seq, vocab] tensor."""

from __future__ import annotations

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmap.kernels.fused_logprob import token_logprobs


def reference_logprobs(hidden, unembedding, targets, softcap=None):
    logits = np.asarray(hidden, np.float64) @ np.asarray(unembedding, np.float64).T
    if softcap:
        logits = softcap * np.tanh(logits / softcap)
    logits -= logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits).sum(axis=1))
    return logits[np.arange(len(targets)), targets] - log_norm


@pytest.mark.parametrize("vocab, tile", [(1000, 256), (1024, 256), (300, 4096), (777, 1)])
@pytest.mark.parametrize("softcap", [None, 5.0])
def test_matches_full_softmax(vocab, tile, softcap):
    keys = jax.random.split(jax.random.key(vocab + tile), 3)
    hidden = jax.random.normal(keys[0], (37, 24)) * 2
    unembedding = jax.random.normal(keys[1], (vocab, 24))
    targets = jax.random.randint(keys[2], (37,), 0, vocab)
    got = token_logprobs(hidden, unembedding, targets, tile=tile, softcap=softcap)
    expected = reference_logprobs(hidden, unembedding, np.asarray(targets), softcap)
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4, rtol=1e-5)


@pytest.mark.parametrize("vocab, tile", [(1000, 256), (777, 1), (300, 4096)])
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("sharded", [False, True], ids=["plain", "mesh"])
def test_output_bias_matches_full_softmax(vocab, tile, softcap, sharded):
    from jax.sharding import Mesh

    from jaxmap.kernels.fused_logprob import sharded_token_logprobs

    keys = jax.random.split(jax.random.key(vocab * tile), 4)
    hidden = jax.random.normal(keys[0], (37, 24)) * 2
    # Three rows past the vocabulary, with random weights and bias: only masking hides them.
    unembedding = jax.random.normal(keys[1], (vocab + 3, 24))
    bias = jax.random.normal(keys[2], (vocab + 3,)) * 3
    targets = jax.random.randint(keys[3], (37,), 0, vocab)
    if sharded:
        mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
        got = sharded_token_logprobs(
            hidden, unembedding, targets, mesh=mesh, vocab_size=vocab, tile=tile, softcap=softcap,
            bias=bias,
        )
    else:
        got = token_logprobs(
            hidden, unembedding[:vocab], targets, tile=tile, softcap=softcap, bias=bias[:vocab]
        )
    # h·w + b is [h, 1]·[w, b]: the bias as one more feature of the float64 reference.
    ones = np.ones((hidden.shape[0], 1))
    expected = reference_logprobs(
        np.concatenate([np.asarray(hidden, np.float64), ones], axis=1),
        np.concatenate([np.asarray(unembedding[:vocab]), np.asarray(bias[:vocab])[:, None]], axis=1),
        np.asarray(targets),
        softcap,
    )
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4, rtol=1e-5)
    without_bias = reference_logprobs(hidden, unembedding[:vocab], np.asarray(targets), softcap)
    assert np.abs(expected - without_bias).max() > 0.1, "the bias must change the answer"


def test_bfloat16_weights_accumulate_in_float32():
    keys = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(keys[0], (16, 64))
    unembedding = jax.random.normal(keys[1], (500, 64)).astype(jnp.bfloat16)
    targets = jax.random.randint(keys[2], (16,), 0, 500)
    got = token_logprobs(hidden, unembedding, targets, tile=128)
    assert got.dtype == jnp.float32
    expected = reference_logprobs(
        np.asarray(hidden.astype(jnp.bfloat16), np.float64), unembedding.astype(jnp.float32), np.asarray(targets)
    )
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-2)


def _all_shapes(jaxpr) -> list[tuple[int, ...]]:
    shapes = []
    for equation in jaxpr.eqns:
        shapes += [tuple(v.aval.shape) for v in equation.outvars if hasattr(v.aval, "shape")]
        for param in equation.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                # Closed jaxprs (scan, jit) wrap a jaxpr; shard_map holds an open one.
                inner = sub if isinstance(sub, jax.extend.core.Jaxpr) else getattr(sub, "jaxpr", None)
                if inner is not None:
                    shapes += _all_shapes(getattr(inner, "jaxpr", inner))
    return shapes


@pytest.mark.parametrize("sharded", [False, True], ids=["no-mesh", "mesh"])
def test_scoring_path_never_materialises_full_logits(tiny_models, sharded):
    from jaxmap.engine import load_model, token_log_likelihoods

    model = load_model(str(tiny_models[0]))
    rows, length, vocab = 4, 33, model.config.vocab_size
    tokens = jnp.zeros((rows, length), jnp.int32)
    tile = 64
    jaxpr = jax.make_jaxpr(token_log_likelihoods, static_argnums=(2, 3, 4))(
        model.params, tokens, model.config, tile, model.mesh if sharded else None
    )
    shapes = _all_shapes(jaxpr.jaxpr)
    positions = rows * (length - 1)
    assert any(s[-1] == tile for s in shapes), "the tiled logits should appear"
    offending = [s for s in shapes if vocab in s and int(np.prod(s)) >= positions * vocab]
    assert not offending, f"full logits materialised: {offending}"
