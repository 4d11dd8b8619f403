"""Causal flash attention as a hand-written Pallas kernel, for the variants the decoder needs and
fused library kernels do not all cover: grouped/multi-query heads, per-layer sliding windows,
attention-logit soft-capping, ALiBi slopes and segment ids (several texts packed in one row,
each attending only to itself).

Each program computes one block of queries of one head: it walks the key blocks that the causal
mask (and the window) leave visible, keeping a running maximum, a rescaled running sum and the
weighted values in registers (online softmax), so the [T, T] score matrix never exists. Masked
positions get -inf and are skipped by the maximum; a query with no visible key (only padding)
returns zeros.

On CPU the kernel runs in Pallas interpret mode (``interpret=True``), which is how the tests
check it against a dense float64 reference and, through the decoder, against the other attention
paths. The decoder reaches it as the ``pallas`` attention path (``jaxmap score --attention
pallas``), which ``auto`` never picks: it has not yet been run on a GPU or TPU in this project,
and ``auto`` changes only after an accelerator run records its figures under
benchmarks/results/. It has no gradient (scoring only).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl


def _attention_kernel(
    q_ref, k_ref, v_ref, query_segments_ref, key_segments_ref, slope_ref, window_ref, out_ref,
    *, block_q, block_k, scale, softcap, length,
):
    query_block = pl.program_id(2)
    q = q_ref[...].astype(jnp.float32) * scale
    query_segments = query_segments_ref[...]
    slope = slope_ref[0]
    # Read at run time, so the decoder's per-layer windows (traced inside its layer scan) work.
    window = window_ref[0]
    query_pos = query_block * block_q + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
    # Key blocks past this query block's last row are fully masked by causality.
    last_block = jnp.minimum((query_block * block_q + block_q - 1) // block_k + 1, length // block_k)
    first_block = jnp.where(
        window > 0, jnp.maximum(query_block * block_q - window + 1, 0) // block_k, 0
    )

    def visit(index, carry):
        running_max, running_sum, accumulated = carry
        start = index * block_k
        k = k_ref[pl.ds(start, block_k), :]
        v = v_ref[pl.ds(start, block_k), :]
        scores = jax.lax.dot_general(
            q.astype(k.dtype), k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
        )
        if softcap:
            scores = softcap * jnp.tanh(scores / softcap)
        key_pos = start + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
        scores = scores + slope * (key_pos - query_pos).astype(jnp.float32)
        visible = (key_pos <= query_pos) & ((window == 0) | (key_pos > query_pos - window))
        visible &= query_segments[:, None] == key_segments_ref[pl.ds(start, block_k)][None, :]
        scores = jnp.where(visible, scores, -jnp.inf)
        new_max = jnp.maximum(running_max, jnp.max(scores, axis=1))
        # A row that has seen no visible key keeps -inf; shift by 0 there so exp() stays 0.
        shift = jnp.where(jnp.isneginf(new_max), 0.0, new_max)
        weights = jnp.exp(scores - shift[:, None])
        rescale = jnp.exp(running_max - shift)
        running_sum = running_sum * rescale + jnp.sum(weights, axis=1)
        accumulated = accumulated * rescale[:, None] + jax.lax.dot_general(
            weights.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32
        )
        return new_max, running_sum, accumulated

    head_dim = q.shape[1]
    initial = (
        jnp.full((block_q,), -jnp.inf, jnp.float32),
        jnp.zeros((block_q,), jnp.float32),
        jnp.zeros((block_q, head_dim), jnp.float32),
    )
    _, running_sum, accumulated = jax.lax.fori_loop(first_block, last_block, visit, initial)
    safe_sum = jnp.where(running_sum > 0, running_sum, 1.0)
    out_ref[...] = (accumulated / safe_sum[:, None]).astype(out_ref.dtype)


@partial(
    jax.jit,
    static_argnames=("scale", "softcap", "block_q", "block_k", "interpret"),
)
def pallas_flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None = None,
    alibi_slopes: jax.Array | None = None,
    *,
    scale: float,
    window: int | jax.Array = 0,
    softcap: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    interpret: bool = False,
) -> jax.Array:
    """Causal attention of q [B, H, T, hd] over k, v [B, Hkv, T, hd] (H a multiple of Hkv):
    [B, H, T, hd] float32.

    ``segment_ids`` [B, T] (int): a query sees only keys of its own segment (packed rows);
    ``alibi_slopes`` [H]: adds ``slope · (key − query)`` to the scores; ``window`` w > 0 (an int
    or a traced int scalar): each query sees itself and the w − 1 keys before it; ``softcap``: ``c · tanh(s / c)`` on the
    scaled scores, before the ALiBi bias and the masks. T is padded to the block sizes internally
    (padding keys form a segment of their own).
    """
    batch, heads, length, head_dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    block = int(np.lcm(block_q, block_k))
    padded = -(-length // block) * block
    if segment_ids is None:
        segment_ids = jnp.zeros((batch, length), jnp.int32)
    if alibi_slopes is None:
        alibi_slopes = jnp.zeros((heads,), jnp.float32)
    pad = padded - length
    q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (q, k, v))
    segment_ids = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, pad)), constant_values=-1)
    kernel = partial(
        _attention_kernel, block_q=block_q, block_k=block_k, scale=scale, softcap=softcap,
        length=padded,
    )
    out = pl.pallas_call(
        kernel,
        grid=(batch, heads, padded // block_q),
        in_specs=[
            pl.BlockSpec((None, None, block_q, head_dim), lambda b, h, i: (b, h, i, 0)),
            pl.BlockSpec((None, None, padded, head_dim), lambda b, h, i: (b, h // group, 0, 0)),
            pl.BlockSpec((None, None, padded, head_dim), lambda b, h, i: (b, h // group, 0, 0)),
            pl.BlockSpec((None, block_q), lambda b, h, i: (b, i)),
            pl.BlockSpec((None, padded), lambda b, h, i: (b, 0)),
            pl.BlockSpec((1,), lambda b, h, i: (h,)),
            pl.BlockSpec((1,), lambda b, h, i: (0,)),
        ],
        out_specs=pl.BlockSpec((None, None, block_q, head_dim), lambda b, h, i: (b, h, i, 0)),
        out_shape=jax.ShapeDtypeStruct((batch, heads, padded, head_dim), jnp.float32),
        interpret=interpret,
    )(
        q, k, v, segment_ids, segment_ids, alibi_slopes.astype(jnp.float32),
        jnp.asarray(window, jnp.int32).reshape(1),
    )
    return out[:, :, :length]
