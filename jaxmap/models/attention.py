"""Causal attention paths of the decoder.

* ``dense``: the whole [T, T] score matrix per head (float32). Fastest for the short rows of
  most text sets on CPU, where XLA fuses it well.
* ``blockwise``: queries in blocks, each walking only the key blocks that causality (and the
  sliding window) leave visible, with an online softmax. Never holds more than
  [block, block] scores per head, and skips the masked half of the square: the path for long
  rows.
* ``xla_fused``: :func:`jax.nn.dot_product_attention`, which uses cuDNN's fused kernel on GPUs
  that support the variant and XLA elsewhere. Only for variants it expresses: no soft-capping,
  no ALiBi, no segment ids.

All take q [B, T, Hkv, G, hd] (G query heads per key/value head), already multiplied by the
attention scale, and k, v [B, T, Hkv, hd], and return the context [B, T, Hkv, G, hd] in
float32. Scores accumulate in float32 whatever ``compute_dtype`` the matmul inputs have.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _visible(query_pos, key_pos, window):
    visible = key_pos <= query_pos
    # A window of w lets each query see itself and the w - 1 keys before it (HF's convention).
    return visible & ((window == 0) | (key_pos > query_pos - window))


def dense_attention(q, k, v, *, window, softcap=None, compute_dtype=jnp.float32):
    """The reference path: every score of the causal square, masked, softmaxed."""
    length = q.shape[1]
    scores = jnp.einsum(
        "bqhgd,bkhd->bhgqk", q.astype(compute_dtype), k.astype(compute_dtype),
        preferred_element_type=jnp.float32,
    )
    if softcap:
        scores = softcap * jnp.tanh(scores / softcap)
    visible = _visible(jnp.arange(length)[:, None], jnp.arange(length)[None, :], window)
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum(
        "bhgqk,bkhd->bqhgd", weights.astype(compute_dtype), v.astype(compute_dtype),
        preferred_element_type=jnp.float32,
    )


def blockwise_attention(q, k, v, *, window, softcap=None, compute_dtype=jnp.float32, block=256):
    """Flash-style attention in pure JAX: O(T · block) score memory per head, masked key blocks
    skipped. ``window`` may be a traced per-layer value (0 = full causal)."""
    batch, length, kv_heads, group, head_dim = q.shape
    blocks = -(-length // block)
    padded = blocks * block
    pad = ((0, 0), (0, padded - length), (0, 0))
    q = jnp.pad(q, (*pad, (0, 0), (0, 0))).astype(compute_dtype)
    k = jnp.pad(k, (*pad, (0, 0))).astype(compute_dtype)
    v = jnp.pad(v, (*pad, (0, 0))).astype(compute_dtype)
    q = q.reshape(batch, blocks, block, kv_heads, group, head_dim)
    k = k.reshape(batch, blocks, block, kv_heads, head_dim)
    v = v.reshape(batch, blocks, block, kv_heads, head_dim)
    offsets = jnp.arange(block)

    def query_block(index):
        queries = q[:, index]
        query_pos = index * block + offsets[:, None]

        def key_block(key_index, carry):
            running_max, running_sum, accumulated = carry
            keys = jax.lax.dynamic_index_in_dim(k, key_index, axis=1, keepdims=False)
            values = jax.lax.dynamic_index_in_dim(v, key_index, axis=1, keepdims=False)
            scores = jnp.einsum(
                "bqhgd,bkhd->bhgqk", queries, keys, preferred_element_type=jnp.float32
            )
            if softcap:
                scores = softcap * jnp.tanh(scores / softcap)
            key_pos = key_index * block + offsets[None, :]
            scores = jnp.where(_visible(query_pos, key_pos, window), scores, -jnp.inf)
            new_max = jnp.maximum(running_max, scores.max(axis=-1))
            shift = jnp.where(jnp.isneginf(new_max), 0.0, new_max)
            weights = jnp.exp(scores - shift[..., None])
            rescale = jnp.exp(running_max - shift)
            running_sum = running_sum * rescale + weights.sum(axis=-1)
            accumulated = accumulated * rescale[..., None] + jnp.einsum(
                "bhgqk,bkhd->bhgqd", weights.astype(compute_dtype), values,
                preferred_element_type=jnp.float32,
            )
            return new_max, running_sum, accumulated

        first = jnp.where(window > 0, jnp.maximum(index * block - window + 1, 0) // block, 0)
        initial = (
            jnp.full((batch, kv_heads, group, block), -jnp.inf, jnp.float32),
            jnp.zeros((batch, kv_heads, group, block), jnp.float32),
            jnp.zeros((batch, kv_heads, group, block, head_dim), jnp.float32),
        )
        _, running_sum, accumulated = jax.lax.fori_loop(first, index + 1, key_block, initial)
        out = accumulated / jnp.where(running_sum > 0, running_sum, 1.0)[..., None]
        return jnp.moveaxis(out, 3, 1)  # [B, block, Hkv, G, hd]

    out = jax.lax.map(query_block, jnp.arange(blocks))  # [blocks, B, block, Hkv, G, hd]
    out = jnp.moveaxis(out, 0, 1).reshape(batch, padded, kv_heads, group, head_dim)
    return out[:, :length]


def xla_fused_attention(q, k, v, *, window, compute_dtype=jnp.float32, implementation=None):
    """:func:`jax.nn.dot_product_attention` (cuDNN where available). ``window`` must be a
    Python int here: the library takes it as a static local window."""
    batch, length, kv_heads, group, head_dim = q.shape
    query = q.reshape(batch, length, kv_heads * group, head_dim).astype(compute_dtype)
    local = (window - 1, 0) if window else None
    out = jax.nn.dot_product_attention(
        query, k.astype(compute_dtype), v.astype(compute_dtype),
        scale=1.0, is_causal=True, local_window_size=local, implementation=implementation,
    )
    return out.astype(jnp.float32).reshape(batch, length, kv_heads, group, head_dim)
