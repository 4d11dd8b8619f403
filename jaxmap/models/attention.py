"""Causal attention paths of the decoder.

* ``dense``: the whole [T, T] score matrix per head (float32). Fastest for the short rows of
  most text sets on CPU, where XLA fuses it well.
* ``blockwise``: queries in blocks, each walking only the key blocks that causality (and the
  sliding window) leave visible, with an online softmax. Never holds more than
  [block, block] scores per head, and skips the masked half of the square: the path for long
  rows.
* ``xla_fused``: :func:`jax.nn.dot_product_attention`, asked for cuDNN's fused kernel on GPUs
  and XLA's implementation elsewhere. Only for variants it expresses: no soft-capping, no
  ALiBi, and (on GPU) no packed rows.
* ``pallas``: the hand-written Pallas flash-attention kernel
  (:func:`jaxmap.kernels.pallas_attention.pallas_flash_attention`), which takes every variant
  (soft-capping, ALiBi slopes, per-layer windows, packed rows) in one fused kernel. Never
  chosen by ``auto``: it waits for an accelerator run to measure it. On CPU it runs in Pallas
  interpret mode (slow; for checking). No gradient.

All take q [B, T, Hkv, G, hd] (G query heads per key/value head), already multiplied by the
attention scale, and k, v [B, T, Hkv, hd], and return the context [B, T, Hkv, G, hd] in
float32. Scores accumulate in float32 whatever ``compute_dtype`` the matmul inputs have. An
additive score ``bias(query_pos, key_pos) -> [Hkv, G, Q, K]`` (ALiBi) is added after the
soft-cap, from positions, so the blockwise path builds it one block at a time.

Packed rows (several texts one after another in a row, :mod:`jaxmap.batching`) pass
``segment_ids`` [B, T]: a query sees only keys of its own segment. Segment ids must not decrease
along a row; the blockwise path relies on that to skip key blocks that hold only earlier
segments. Within a segment, row offsets and the text's own positions differ by a constant, so
causality, windows and ALiBi read the row offsets unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..kernels.pallas_attention import pallas_flash_attention


def _visible(query_pos, key_pos, window, query_segment=None, key_segment=None):
    """Which keys each query sees: [Q, K], or [B, 1, 1, Q, K] with segments [B, Q], [B, K]."""
    visible = key_pos <= query_pos
    # A window of w lets each query see itself and the w - 1 keys before it (HF's convention).
    visible = visible & ((window == 0) | (key_pos > query_pos - window))
    if query_segment is None:
        return visible
    same = query_segment[:, :, None] == key_segment[:, None, :]
    return (visible[None] & same)[:, None, None]


def _stack_queries(q):
    """q [B, Q, Hkv, G, hd] as [B, Hkv, G * Q, hd]: the G query heads that share a key head
    stacked into one matrix, so that each key head's scores are one well-shaped matmul.

    Scores, masks and softmax stay in this 4-D layout: einsum's ``bqhgd,bkhd->bhgqk`` lowers
    to G thin matmuls, and XLA's CPU backend fuses the softmax poorly over a 5-D
    [B, Hkv, G, Q, K] tensor; together 3x slower at SmolLM2's shapes
    (benchmarks/bench_attention.py)."""
    batch, queries, kv_heads, group, head_dim = q.shape
    return jnp.transpose(q, (0, 2, 3, 1, 4)).reshape(batch, kv_heads, group * queries, head_dim)


def _unstack_queries(context, group):
    """[B, Hkv, G * Q, hd] back to [B, Q, Hkv, G, hd]."""
    batch, kv_heads, stacked, head_dim = context.shape
    context = context.reshape(batch, kv_heads, group, stacked // group, head_dim)
    return jnp.transpose(context, (0, 3, 1, 2, 4))


def _stack_groups(x, group):
    """A mask or bias over [..., G or 1, Q, K] (or [Q, K]) for stacked queries:
    [..., G * Q, K]."""
    if x.ndim == 2:
        x = x[None]
    x = jnp.broadcast_to(x, (*x.shape[:-3], group, *x.shape[-2:]))
    return x.reshape(*x.shape[:-3], group * x.shape[-2], x.shape[-1])


def dense_attention(
    q, k, v, *, window, softcap=None, bias=None, compute_dtype=jnp.float32, segment_ids=None,
    query_offset=0, query_chunks=1,
):
    """Every score of the causal square, masked, softmaxed.

    ``query_offset`` (may be traced) is the row offset of the first query when the queries are
    the last few positions of the keys' row, as in a decoding step over a key/value cache; keys
    past the last query are then masked by causality.

    ``query_chunks`` > 1 (rows of queries and keys alike) splits the queries into that many
    chunks, each scored against only the keys up to its last query: an exact softmax per chunk
    that skips most of the square's masked half ((n + 1) / 2n of it is computed) in a few
    large matmuls, with no loop."""
    if query_chunks <= 1:
        return _dense_scores_softmax(
            q, k, v, window, softcap, bias, compute_dtype, query_offset, segment_ids, segment_ids
        )
    length = q.shape[1]
    size = -(-length // query_chunks)
    parts = []
    for start in range(0, length, size):
        stop = min(start + size, length)
        parts.append(_dense_scores_softmax(
            q[:, start:stop], k[:, :stop], v[:, :stop], window, softcap, bias, compute_dtype,
            start, None if segment_ids is None else segment_ids[:, start:stop],
            None if segment_ids is None else segment_ids[:, :stop],
        ))
    return jnp.concatenate(parts, axis=1)


def _dense_scores_softmax(
    q, k, v, window, softcap, bias, compute_dtype, query_offset, query_segments, key_segments
):
    group = q.shape[3]
    # Keys and values stay [B, K, Hkv, hd]: transposing them first made the bfloat16 matmuls
    # 1.6x slower on CPU and the float32 ones no faster.
    scores = jnp.einsum(
        "bhqd,bkhd->bhqk", _stack_queries(q.astype(compute_dtype)), k.astype(compute_dtype),
        preferred_element_type=jnp.float32,
    )
    if softcap:
        scores = softcap * jnp.tanh(scores / softcap)
    query_pos = query_offset + jnp.arange(q.shape[1])[:, None]
    key_pos = jnp.arange(k.shape[1])[None, :]
    if bias is not None:
        scores = scores + _stack_groups(bias(query_pos, key_pos), group)
    visible = _visible(query_pos, key_pos, window, query_segments, key_segments)
    scores = jnp.where(_stack_groups(visible, group), scores, jnp.finfo(jnp.float32).min)
    # The softmax's division is applied to the [Q, hd] context rather than the [Q, K] weights:
    # one pass less over the score matrix, which is what this path spends its time on (the
    # matmuls are small). Every query sees itself, so each sum is at least 1.
    weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
    context = jnp.einsum(
        "bhqk,bkhd->bhqd", weights.astype(compute_dtype), v.astype(compute_dtype),
        preferred_element_type=jnp.float32,
    )
    context = context / weights.sum(axis=-1, keepdims=True)
    return _unstack_queries(context, group)


def blockwise_attention(
    q, k, v, *, window, softcap=None, bias=None, compute_dtype=jnp.float32, block=256,
    segment_ids=None,
):
    """Flash-style attention in pure JAX: O(T · block) score memory per head, masked key blocks
    skipped (causal, outside the window, or holding only earlier segments). ``window`` may be a
    traced per-layer value (0 = full causal)."""
    batch, length, kv_heads, group, head_dim = q.shape
    blocks = -(-length // block)
    padded = blocks * block
    pad = ((0, 0), (0, padded - length), (0, 0))
    q = jnp.pad(q, (*pad, (0, 0), (0, 0))).astype(compute_dtype)
    k = jnp.pad(k, (*pad, (0, 0))).astype(compute_dtype)
    v = jnp.pad(v, (*pad, (0, 0))).astype(compute_dtype)
    # [blocks, B, Hkv, G * block, hd]: each query block stacked as in the dense path.
    q = jnp.moveaxis(q.reshape(batch, blocks, block, kv_heads, group, head_dim), 1, 0)
    q = _stack_queries(q.reshape(blocks * batch, block, kv_heads, group, head_dim))
    q = q.reshape(blocks, batch, kv_heads, group * block, head_dim)
    k = k.reshape(batch, blocks, block, kv_heads, head_dim)
    v = v.reshape(batch, blocks, block, kv_heads, head_dim)
    offsets = jnp.arange(block)
    if segment_ids is not None:
        # Padding repeats the last id, which keeps the ids non-decreasing; padded queries are
        # dropped and padded keys lie after every real query.
        segments = jnp.pad(segment_ids, ((0, 0), (0, padded - length)), mode="edge")
        segments = segments.reshape(batch, blocks, block)
        # Key block j can matter to query block i only if some row's last key there belongs to
        # the segment of that row's first query in block i or a later one.
        overlaps = jnp.any(segments[:, None, :, -1] >= segments[:, :, None, 0], axis=0)

    def query_block(index):
        queries = q[index]
        query_pos = index * block + offsets[:, None]
        query_segment = None if segment_ids is None else segments[:, index]

        def key_block(key_index, carry):
            running_max, running_sum, accumulated = carry
            keys = jax.lax.dynamic_index_in_dim(k, key_index, axis=1, keepdims=False)
            values = jax.lax.dynamic_index_in_dim(v, key_index, axis=1, keepdims=False)
            scores = jnp.einsum(
                "bhqd,bkhd->bhqk", queries, keys, preferred_element_type=jnp.float32
            )
            if softcap:
                scores = softcap * jnp.tanh(scores / softcap)
            key_pos = key_index * block + offsets[None, :]
            if bias is not None:
                scores = scores + _stack_groups(bias(query_pos, key_pos), group)
            key_segment = None if segment_ids is None else segments[:, key_index]
            visible = _visible(query_pos, key_pos, window, query_segment, key_segment)
            scores = jnp.where(_stack_groups(visible, group), scores, -jnp.inf)
            new_max = jnp.maximum(running_max, scores.max(axis=-1))
            shift = jnp.where(jnp.isneginf(new_max), 0.0, new_max)
            weights = jnp.exp(scores - shift[..., None])
            rescale = jnp.exp(running_max - shift)
            running_sum = running_sum * rescale + weights.sum(axis=-1)
            accumulated = accumulated * rescale[..., None] + jnp.einsum(
                "bhqk,bkhd->bhqd", weights.astype(compute_dtype), values,
                preferred_element_type=jnp.float32,
            )
            return new_max, running_sum, accumulated

        first = jnp.where(window > 0, jnp.maximum(index * block - window + 1, 0) // block, 0)

        def maybe_key_block(carry, key_index):
            # A scan over every key block with the masked ones skipped by cond: unlike a loop
            # with traced bounds, this is reverse-differentiable (training runs through it).
            visible = (key_index >= first) & (key_index <= index)
            if segment_ids is not None:
                visible = visible & overlaps[index, key_index]
            return jax.lax.cond(visible, key_block, lambda _, c: c, key_index, carry), None

        initial = (
            jnp.full((batch, kv_heads, group * block), -jnp.inf, jnp.float32),
            jnp.zeros((batch, kv_heads, group * block), jnp.float32),
            jnp.zeros((batch, kv_heads, group * block, head_dim), jnp.float32),
        )
        (_, running_sum, accumulated), _ = jax.lax.scan(maybe_key_block, initial, jnp.arange(blocks))
        out = accumulated / jnp.where(running_sum > 0, running_sum, 1.0)[..., None]
        return _unstack_queries(out, group)  # [B, block, Hkv, G, hd]

    out = jax.lax.map(query_block, jnp.arange(blocks))  # [blocks, B, block, Hkv, G, hd]
    out = jnp.moveaxis(out, 0, 1).reshape(batch, padded, kv_heads, group, head_dim)
    return out[:, :length]


def xla_fused_attention(
    q, k, v, *, window, compute_dtype=jnp.float32, implementation=None, segment_ids=None
):
    """:func:`jax.nn.dot_product_attention` for the variants it expresses (no soft-cap, no
    bias). ``window`` must be a Python int here: the library takes it as a static local
    window. ``implementation``: ``"cudnn"`` for the fused GPU kernel, None for XLA's.
    ``segment_ids`` become a boolean mask, which only XLA's implementation takes."""
    batch, length, kv_heads, group, head_dim = q.shape
    query = q.reshape(batch, length, kv_heads * group, head_dim).astype(compute_dtype)
    local = (window - 1, 0) if window else None
    mask = None
    if segment_ids is not None:
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    out = jax.nn.dot_product_attention(
        query, k.astype(compute_dtype), v.astype(compute_dtype), mask=mask,
        scale=1.0, is_causal=True, local_window_size=local, implementation=implementation,
    )
    return out.astype(jnp.float32).reshape(batch, length, kv_heads, group, head_dim)


def pallas_attention(
    q, k, v, *, window, softcap=None, alibi_slopes=None, compute_dtype=jnp.float32,
    segment_ids=None,
):
    """The Pallas kernel on the decoder's layout: q [B, T, Hkv, G, hd] (scaled) is laid out as
    [B, Hkv·G, T, hd] (head h = kv_head·G + g, the kernel's grouping), k and v as
    [B, Hkv, T, hd]. ``alibi_slopes`` [H] (times the ALiBi scale) replace the bias function;
    ``window`` may be traced. Interpret mode off accelerators."""
    batch, length, kv_heads, group, head_dim = q.shape
    queries = jnp.transpose(q.reshape(batch, length, kv_heads * group, head_dim), (0, 2, 1, 3))
    keys, values = (jnp.transpose(x, (0, 2, 1, 3)) for x in (k, v))
    out = pallas_flash_attention(
        queries.astype(compute_dtype), keys.astype(compute_dtype), values.astype(compute_dtype),
        segment_ids, alibi_slopes, scale=1.0, window=window, softcap=softcap,
        interpret=jax.default_backend() == "cpu",
    )
    return jnp.transpose(out, (0, 2, 1, 3)).reshape(batch, length, kv_heads, group, head_dim)


PATHS = ("dense", "blockwise", "xla_fused", "pallas")

# Rows at least this long take the blockwise path on CPU, in blocks of block_size(length).
# Measured on the 2-core CPU machine (benchmarks/bench_attention.py,
# results/attention-cpu-2core-2026-12-02-stacked.md: SmolLM2-135M's heads, 2,048 padded
# positions per batch): the chunked dense path is 1.4-1.8x faster up to 512 positions, about
# even at 768, and blockwise 1.2x faster from 1,024 on (it also never holds the whole square).
CPU_BLOCKWISE_FROM = 1024


def dense_query_chunks(length: int) -> int:
    """Query chunks of the dense path (:func:`dense_attention`): chunks of at least 32 queries,
    8 of them for rows under 1,024 positions, 4 from there on. Measured on 2-core CPU machines
    at 2,048 padded positions per batch (SmolLM2-135M's heads): 4 chunks were 1.2x (416
    positions) to 1.7x (1,024) faster than one in float32 (Intel Xeon, 2026-12-02); with the
    softmax normalised after the value product, 8 chunks took 14.7 ms against 16.6 ms for 4 at
    416 positions and 11.8 against 12.9 at 256, but 62.7 against 59.8 at 1,024 (AMD EPYC,
    2026-12-03, packed rows of 3 segments, best of 7)."""
    return max(1, min(8 if length < 1024 else 4, length // 32))


def block_size(length: int) -> int:
    """Key/query block of the blockwise path: 128 for rows under 512 positions, 256 from 512
    on (the fastest at those lengths on CPU, benchmarks/bench_attention.py)."""
    return 128 if length < 512 else 256


def choose_path(
    setting: str,
    length: int,
    windows: tuple[int, ...],
    softcap: float | None,
    has_bias: bool,
    compute_dtype,
    backend: str | None = None,
    packed: bool = False,
    rounded_alibi: bool = False,
) -> str:
    """The attention path for a row length: ``setting`` if not ``"auto"`` (checked against the
    variant), else per backend: on CPU dense for short rows and blockwise from
    :data:`CPU_BLOCKWISE_FROM`; on accelerators the library's fused kernel where it expresses
    the variant (no soft-cap, no ALiBi, one window for every layer, 16-bit inputs, which cuDNN
    needs, and rows that are not packed, since cuDNN takes no segment mask), else blockwise.
    ``pallas`` is only ever chosen by name; it takes ALiBi as slopes, so not the bias that
    Falcon rounds to bfloat16 per position (``rounded_alibi``)."""
    if setting not in ("auto", *PATHS):
        raise ValueError(f"unknown attention path {setting!r}; choose auto or one of {PATHS}")
    fused_ok = not softcap and not has_bias and len(set(windows)) <= 1
    if setting == "xla_fused" and not fused_ok:
        raise ValueError(
            "the xla_fused attention path takes no soft-capping, no ALiBi and one window for all layers"
        )
    if setting == "pallas" and rounded_alibi:
        raise ValueError(
            "the pallas attention path takes ALiBi as slopes, not a bias rounded to bfloat16 "
            "per position (this model's alibi_bfloat16)"
        )
    if setting != "auto":
        return setting
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "blockwise" if length >= CPU_BLOCKWISE_FROM else "dense"
    if fused_ok and not packed and jnp.dtype(compute_dtype).itemsize == 2:
        return "xla_fused"
    return "blockwise"


def attend(
    q, k, v, *, window, softcap, bias, compute_dtype, path: str, static_window: int = 0,
    segment_ids=None, alibi_slopes=None,
):
    """Run attention on ``path`` (see :func:`choose_path`). ``window`` may be traced;
    ``static_window`` is the one window every layer shares, which the fused path needs as a
    Python int. ``alibi_slopes`` [H] stand for ``bias`` on the pallas path."""
    if path == "dense":
        return dense_attention(
            q, k, v, window=window, softcap=softcap, bias=bias, compute_dtype=compute_dtype,
            segment_ids=segment_ids, query_chunks=dense_query_chunks(q.shape[1]),
        )
    if path == "blockwise":
        return blockwise_attention(
            q, k, v, window=window, softcap=softcap, bias=bias, compute_dtype=compute_dtype,
            block=block_size(q.shape[1]), segment_ids=segment_ids,
        )
    if path == "pallas":
        return pallas_attention(
            q, k, v, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
            compute_dtype=compute_dtype, segment_ids=segment_ids,
        )
    if jax.default_backend() == "gpu" and segment_ids is None:
        try:
            return xla_fused_attention(
                q, k, v, window=static_window, compute_dtype=compute_dtype, implementation="cudnn"
            )
        except (ValueError, NotImplementedError, RuntimeError):
            # cuDNN refuses some head sizes and GPU generations while tracing; XLA's
            # implementation takes every shape.
            pass
    return xla_fused_attention(
        q, k, v, window=static_window, compute_dtype=compute_dtype, segment_ids=segment_ids
    )
