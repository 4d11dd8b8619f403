"""The fused log-prob as one hand-written Pallas kernel: for a block of positions, the
unembedding matmul, the online log-sum-exp and the target gather run in one program, tile by
tile over the vocabulary, so neither the logits nor a [positions, vocab] intermediate ever leaves
the chip's fast memory.

Same maths as :func:`jaxmap.kernels.fused_logprob.token_logprobs` (the pure-JAX path the engine
uses everywhere today): ``log p(target) = h·W[target] + b[target] − logsumexp(h·Wᵀ + b)``, with
optional final-logit soft-capping applied inside each tile after the bias. The grid runs over
blocks of positions; each program walks every vocabulary tile in a loop, keeping a running
maximum, a rescaled running sum and the target's logit in registers. The target is picked by
comparing the tile's column indices with the targets (no gather), which lowers on every Pallas
backend.

On CPU the kernel runs in Pallas interpret mode (``interpret=True``), which is how the tests
check it against a float64 reference and, through the engine, against transformers. The engine
runs it when asked (``logprob="pallas"``, ``jaxmap score --logprob-kernel pallas``); the
default stays the pure-JAX kernel: this one has not yet been run on a GPU or TPU in this
project, and the default changes only after an accelerator run records its figures under
benchmarks/results/. It has no gradient (scoring only).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def _logprob_kernel(
    hidden_ref, weights_ref, bias_ref, targets_ref, out_ref, *, tile, tiles, vocab_size, softcap
):
    hidden = hidden_ref[...]
    targets = targets_ref[...]
    rows = hidden.shape[0]
    columns = jax.lax.broadcasted_iota(jnp.int32, (rows, tile), 1)

    def visit(index, carry):
        running_max, running_sum, target_logit = carry
        start = index * tile
        weights = weights_ref[pl.ds(start, tile), :]
        logits = jax.lax.dot_general(
            hidden.astype(weights.dtype), weights, (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        logits = logits + bias_ref[pl.ds(start, tile)].astype(jnp.float32)[None, :]
        if softcap:
            logits = softcap * jnp.tanh(logits / softcap)
        # Padding rows of the last tile (and of a mesh-padded vocabulary) are not tokens.
        logits = jnp.where(columns + start < vocab_size, logits, -jnp.inf)
        new_max = jnp.maximum(running_max, jnp.max(logits, axis=1))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(
            jnp.exp(logits - new_max[:, None]), axis=1
        )
        hit = columns == (targets - start)[:, None]
        target_logit = target_logit + jnp.sum(jnp.where(hit, logits, 0.0), axis=1)
        return new_max, running_sum, target_logit

    # Every tile holds at least one real column (the vocabulary is padded by less than a tile),
    # so the running maximum is finite from the first tile on.
    initial = (
        jnp.full((rows,), -jnp.inf, jnp.float32),
        jnp.zeros((rows,), jnp.float32),
        jnp.zeros((rows,), jnp.float32),
    )
    running_max, running_sum, target_logit = jax.lax.fori_loop(0, tiles, visit, initial)
    out_ref[...] = target_logit - running_max - jnp.log(running_sum)


@partial(jax.jit, static_argnames=("tile", "block_rows", "softcap", "interpret"))
def pallas_token_logprobs(
    hidden: jax.Array,
    unembedding: jax.Array,
    targets: jax.Array,
    bias: jax.Array | None = None,
    *,
    tile: int = 512,
    block_rows: int = 128,
    softcap: float | None = None,
    interpret: bool = False,
) -> jax.Array:
    """``log p(targets[n] | hidden[n])`` for hidden [N, D], unembedding [V, D] (optional bias
    [V]) and int targets [N]: float32 [N].

    ``tile`` vocabulary rows and ``block_rows`` positions per step; both are padded internally
    (positions with zeros, the vocabulary with masked rows), so any N and V work.
    ``interpret=True`` runs the kernel in Pallas' interpreter (CPU, tests).
    """
    positions, width = hidden.shape
    vocab_size = unembedding.shape[0]
    if bias is None:
        bias = jnp.zeros((vocab_size,), jnp.float32)
    tiles = -(-vocab_size // tile)
    padded_vocab = tiles * tile
    padded_positions = -(-positions // block_rows) * block_rows
    unembedding = jnp.pad(unembedding, ((0, padded_vocab - vocab_size), (0, 0)))
    bias = jnp.pad(bias.astype(jnp.float32), (0, padded_vocab - vocab_size))
    hidden = jnp.pad(hidden, ((0, padded_positions - positions), (0, 0)))
    targets = jnp.pad(targets.astype(jnp.int32), (0, padded_positions - positions))
    kernel = partial(
        _logprob_kernel, tile=tile, tiles=tiles, vocab_size=vocab_size, softcap=softcap
    )
    out = pl.pallas_call(
        kernel,
        grid=(padded_positions // block_rows,),
        in_specs=[
            pl.BlockSpec((block_rows, width), lambda i: (i, 0)),
            pl.BlockSpec((padded_vocab, width), lambda i: (0, 0)),
            pl.BlockSpec((padded_vocab,), lambda i: (0,)),
            pl.BlockSpec((block_rows,), lambda i: (i,)),
        ],
        out_specs=pl.BlockSpec((block_rows,), lambda i: (i,)),
        out_shape=jax.ShapeDtypeStruct((padded_positions,), jnp.float32),
        interpret=interpret,
    )(hidden, unembedding, bias, targets)
    return out[:positions]
