"""Token log-probabilities without materialising the logits: a vocab-tiled online logsumexp.

For hidden states h [N, D] and an unembedding W [V, D], ``log p(target) = h·W[target] −
logsumexp(h·Wᵀ)``. The vocabulary is walked in tiles of ``tile`` rows; each tile's logits
([N, tile], float32) update a running maximum and a rescaled running sum, and the target's logit
is picked up in whichever tile holds it. Peak memory is O(N · tile), never O(N · V): Gemma's
262k vocabulary would otherwise need tens of GB at scale. Final-logit soft-capping is applied
inside each tile.

The pure-JAX reference (full logits and ``log_softmax``) lives in the tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_TILE = 8192


def _tile_logits(hidden: jax.Array, weights: jax.Array, softcap: float | None) -> jax.Array:
    logits = jax.lax.dot_general(
        hidden.astype(weights.dtype),
        weights,
        (((1,), (1,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    if softcap:
        logits = softcap * jnp.tanh(logits / softcap)
    return logits


def _update(carry, logits: jax.Array, targets: jax.Array, offset):
    running_max, running_sum, target_logit = carry
    tile = logits.shape[1]
    new_max = jnp.maximum(running_max, jnp.max(logits, axis=1))
    running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
        jnp.exp(logits - new_max[:, None]), axis=1
    )
    local = targets - offset
    in_tile = (local >= 0) & (local < tile)
    picked = jnp.take_along_axis(logits, jnp.clip(local, 0, tile - 1)[:, None], axis=1)[:, 0]
    target_logit = jnp.where(in_tile, picked, target_logit)
    return new_max, running_sum, target_logit


def token_logprobs(
    hidden: jax.Array,
    unembedding: jax.Array,
    targets: jax.Array,
    *,
    tile: int = DEFAULT_TILE,
    softcap: float | None = None,
) -> jax.Array:
    """log p(targets) under softmax(hidden @ unembeddingᵀ), as float32 [N].

    hidden: [N, D] (any float dtype; cast to the unembedding's dtype for the matmul, with
    float32 accumulation). unembedding: [V, D]. targets: [N] int.
    """
    count = hidden.shape[0]
    vocab = unembedding.shape[0]
    tile = min(tile, vocab)
    full_tiles, remainder = divmod(vocab, tile)
    carry = (
        jnp.full((count,), -jnp.inf, jnp.float32),
        jnp.zeros((count,), jnp.float32),
        jnp.zeros((count,), jnp.float32),
    )

    def step(carry, index):
        offset = index * tile
        weights = jax.lax.dynamic_slice_in_dim(unembedding, offset, tile, axis=0)
        return _update(carry, _tile_logits(hidden, weights, softcap), targets, offset), None

    carry, _ = jax.lax.scan(step, carry, jnp.arange(full_tiles))
    if remainder:
        offset = full_tiles * tile
        logits = _tile_logits(hidden, unembedding[offset:], softcap)
        carry = _update(carry, logits, targets, offset)
    running_max, running_sum, target_logit = carry
    return target_logit - (running_max + jnp.log(running_sum))
