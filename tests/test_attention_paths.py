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
    # Query chunks, each against its key prefix (uneven: 70 = 24 + 24 + 22).
    chunked = dense_attention(q, k, v, window=jnp.int32(window), softcap=softcap, query_chunks=3)
    np.testing.assert_allclose(np.asarray(chunked), expected, atol=3e-5, rtol=1e-4)


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
                for value in param if isinstance(param, (tuple, list)) else (param,):
                    inner = getattr(value, "jaxpr", None)
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


def test_choose_path_per_backend_and_variant():
    from jaxmap.models.attention import CPU_BLOCKWISE_FROM, choose_path

    common = dict(windows=(0, 0), softcap=None, has_bias=False)
    assert choose_path("auto", CPU_BLOCKWISE_FROM - 1, compute_dtype=jnp.float32, backend="cpu", **common) == "dense"
    assert choose_path("auto", CPU_BLOCKWISE_FROM, compute_dtype=jnp.float32, backend="cpu", **common) == "blockwise"
    assert choose_path("auto", 512, compute_dtype=jnp.bfloat16, backend="gpu", **common) == "xla_fused"
    # cuDNN's fused kernel needs 16-bit inputs; soft-capping, ALiBi and mixed windows it lacks.
    assert choose_path("auto", 512, compute_dtype=jnp.float32, backend="gpu", **common) == "blockwise"
    assert choose_path("auto", 512, (0, 0), 50.0, False, jnp.bfloat16, backend="gpu") == "blockwise"
    assert choose_path("auto", 512, (0, 0), None, True, jnp.bfloat16, backend="gpu") == "blockwise"
    assert choose_path("auto", 512, (4, 0), None, False, jnp.bfloat16, backend="gpu") == "blockwise"
    assert choose_path("dense", 4096, compute_dtype=jnp.float32, backend="cpu", **common) == "dense"
    with pytest.raises(ValueError, match="soft-capping"):
        choose_path("xla_fused", 64, (0,), 50.0, False, jnp.bfloat16)
    with pytest.raises(ValueError, match="unknown attention path"):
        choose_path("flash", 64, (0,), None, False, jnp.float32)


PATH_CASES = {
    "mistral-window": lambda t: t.MistralConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=300,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=7, max_position_embeddings=256,
    ),
    "gemma2-softcap": lambda t: t.Gemma2Config(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=300,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=5,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0, max_position_embeddings=256,
    ),
    "bloom-alibi": lambda t: t.BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=300),
}


@pytest.mark.parametrize("case", sorted(PATH_CASES))
def test_every_attention_path_matches_transformers(case, tmp_path):
    """One model scored with the attention path forced to dense, blockwise, then the Pallas
    kernels (attention and log-prob, interpret mode, texts packed into rows and bucketed): each
    within 1e-3 nats of transformers on every text (the texts' rows span several blocks)."""
    import transformers

    from conftest import TEXTS, reference_loglik, save_random_model
    from jaxmap.engine import load_model, score_tokens
    from jaxmap.texts import TextSet
    from jaxmap.tokenization import tokenize

    directory = save_random_model(
        tmp_path / "model", PATH_CASES[case](transformers), seed=7,
        adds_bos=case != "bloom-alibi", norm_center=0.0 if case.startswith("gemma") else 1.0,
    )
    expected, _ = reference_loglik(directory, TEXTS, "full")
    model = load_model(str(directory))
    tokens = tokenize(TextSet.from_texts(TEXTS), model.tokenizer, "full")
    runs = [
        ("dense", "fused", "auto"), ("blockwise", "fused", "auto"),
        ("pallas", "pallas", "pack"), ("pallas", "fused", "buckets"),
    ]
    for attention, logprob, packing in runs:
        result = score_tokens(
            model, tokens, batch_tokens=256, progress=False, attention=attention,
            logprob=logprob, packing=packing,
        )
        error = np.abs(result.loglik - expected).max()
        assert error <= 1e-3, (attention, logprob, packing, error)
        assert (result.stats["attention"], result.stats["logprob"]) == (attention, logprob)
        assert result.stats["batching"].startswith(packing if packing != "auto" else "")


def test_kernel_settings_that_cannot_run_say_why_in_one_line(tmp_path):
    import dataclasses
    from types import SimpleNamespace

    import transformers

    from conftest import save_random_model
    from jaxmap.engine import check_kernels, load_model, with_kernels
    from jaxmap.errors import JaxmapError

    model = load_model(str(save_random_model(tmp_path / "m", PATH_CASES["gemma2-softcap"](transformers), seed=1, norm_center=0.0)))
    one_device = model.mesh
    for attention, logprob, message in [
        ("flash", "fused", "unknown attention path 'flash'; choose auto or one of dense, blockwise, xla_fused, pallas"),
        ("auto", "triton", "unknown log-prob kernel 'triton'; choose one of fused, pallas"),
        ("xla_fused", "fused", "attention path 'xla_fused': the xla_fused attention path takes no soft-capping"),
    ]:
        with pytest.raises(JaxmapError) as caught:
            with_kernels(model.config, attention, logprob, one_device)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    rounded = dataclasses.replace(model.config, attn_logit_softcap=None, alibi_bfloat16=True)
    with pytest.raises(JaxmapError, match="pallas attention path takes ALiBi as slopes"):
        with_kernels(rounded, "pallas", "fused", one_device)
    with pytest.raises(JaxmapError, match="the pallas kernels run on one device and this mesh has 4"):
        check_kernels("auto", "pallas", SimpleNamespace(size=4))
    check_kernels("pallas", "pallas", SimpleNamespace(size=1))


@pytest.mark.parametrize("window", [0, 4])
def test_segment_ids_keep_packed_pieces_apart_on_every_path(window):
    """A packed row [a | b | padding] attends as the pieces alone would, on every path."""
    q, k, v = _inputs(70, seed=11)
    sizes = [23, 40]
    segments = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)] + [np.full(70 - sum(sizes), 2)])
    segment_ids = jnp.asarray(np.stack([segments, segments]), jnp.int32)
    paths = {
        "dense": lambda: dense_attention(q, k, v, window=jnp.int32(window), segment_ids=segment_ids),
        "dense in 4 query chunks": lambda: dense_attention(
            q, k, v, window=jnp.int32(window), segment_ids=segment_ids, query_chunks=4
        ),
        "blockwise": lambda: blockwise_attention(
            q, k, v, window=jnp.int32(window), block=16, segment_ids=segment_ids
        ),
        "xla_fused": lambda: xla_fused_attention(q, k, v, window=window, segment_ids=segment_ids),
    }
    start = 0
    for size in sizes:
        piece = slice(start, start + size)
        alone = reference(q[:, piece], k[:, piece], v[:, piece], window, None)
        for name, run in paths.items():
            got = np.asarray(run())[:, piece]
            np.testing.assert_allclose(got, alone, atol=3e-5, rtol=1e-4, err_msg=name)
        start += size
    # Without the segments the second piece would see the first: the check has teeth.
    unsegmented = np.asarray(dense_attention(q, k, v, window=jnp.int32(window)))[:, 23:63]
    assert window or np.abs(unsegmented - reference(q[:, 23:63], k[:, 23:63], v[:, 23:63], 0, None)).max() > 1e-2
