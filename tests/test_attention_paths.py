"""The decoder's attention paths (jaxmap/models/attention.py) against a dense float64 reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmap.models.attention import blockwise_attention, dense_attention, xla_fused_attention


def reference(q, k, v, window, softcap):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scores = np.einsum("bqhgd,bkhd->bhgqk", q, k)
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    length = q.shape[1]
    query, key = np.arange(length)[:, None], np.arange(length)[None, :]
    visible = (key <= query) & ((window == 0) | (key > query - window))
    scores = np.where(visible, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhgqk,bkhd->bqhgd", weights, v)


def _inputs(length, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (2, length, 2, 2, 8)) * 1.5
    k = jax.random.normal(keys[1], (2, length, 2, 8)) * 1.5
    v = jax.random.normal(keys[2], (2, length, 2, 8))
    return q, k, v


@pytest.mark.parametrize("window", [0, 1, 5, 33])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_blockwise_matches_reference(window, softcap):
    q, k, v = _inputs(70, seed=window)
    # The window is traced, as the decoder's per-layer windows are inside lax.scan.
    blockwise = jax.jit(
        lambda q, k, v, w: blockwise_attention(q, k, v, window=w, softcap=softcap, block=16)
    )
    got = blockwise(q, k, v, jnp.int32(window))
    expected = reference(q, k, v, window, softcap)
    np.testing.assert_allclose(np.asarray(got), expected, atol=3e-5, rtol=1e-4)
    dense = dense_attention(q, k, v, window=jnp.int32(window), softcap=softcap)
    np.testing.assert_allclose(np.asarray(dense), expected, atol=3e-5, rtol=1e-4)


def test_blockwise_holds_no_square_score_matrix():
    q, k, v = _inputs(512)
    jaxpr = jax.make_jaxpr(
        lambda q, k, v: blockwise_attention(q, k, v, window=jnp.int32(0), block=64)
    )(q, k, v)
    shapes = []

    def walk(jaxpr):
        for equation in jaxpr.eqns:
            shapes.extend(tuple(getattr(out.aval, "shape", ())) for out in equation.outvars)
            for param in equation.params.values():
                inner = getattr(param, "jaxpr", None)
                if inner is not None:
                    walk(getattr(inner, "jaxpr", inner))

    walk(jaxpr.jaxpr)
    assert shapes, "no equations seen"
    assert not any(shape[-2:] == (512, 512) for shape in shapes if len(shape) >= 2)
    assert any(shape[-2:] == (64, 64) for shape in shapes if len(shape) >= 2)


@pytest.mark.parametrize("window", [0, 6])
def test_xla_fused_matches_reference(window):
    q, k, v = _inputs(40, seed=3)
    got = xla_fused_attention(q, k, v, window=window)
    np.testing.assert_allclose(np.asarray(got), reference(q, k, v, window, None), atol=3e-5, rtol=1e-4)
