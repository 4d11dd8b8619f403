"""Token log-probabilities without materialising the logits: a vocab-tiled online logsumexp.

For hidden states h [N, D] and an unembedding W [V, D], ``log p(target) = h·W[target] −
logsumexp(h·Wᵀ)``. The vocabulary is walked in tiles of ``tile`` rows; each tile's logits
([N, tile], float32) update a running maximum and a rescaled running sum, and the target's logit
is picked up in whichever tile holds it. Peak memory is O(N · tile), never O(N · V): Gemma's
262k vocabulary would otherwise need tens of GB at scale. An output-projection bias (GPT-J, Phi)
and final-logit soft-capping are applied inside each tile, in that order.

:func:`sharded_token_logprobs` splits the vocabulary over a mesh's model axis (and the positions
over its data axis): every shard walks its own rows with the same tiles, and the shards' running
maxima, sums and target logits are combined with one ``pmax`` and two ``psum`` over [N] vectors.

With ``with_argmax``, each tile also reports its first largest entry, and the walk keeps the
first index of the largest logit seen so far: the vocabulary's argmax, the lowest index among
ties, as ``argmax`` over the full logits gives it. That tells whether a target is the greedy
token (``is_greedy`` of a conditional score) without the logits ever existing whole.

The pure-JAX reference (full logits and ``log_softmax``) lives in the tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

DEFAULT_TILE = 8192


def _tile_logits(
    hidden: jax.Array,
    weights: jax.Array,
    bias: jax.Array | None,
    softcap: float | None,
    offset,
    vocab_size: int | None,
) -> jax.Array:
    logits = jax.lax.dot_general(
        hidden.astype(weights.dtype),
        weights,
        (((1,), (1,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)[None, :]
    if softcap:
        logits = softcap * jnp.tanh(logits / softcap)
    if vocab_size is not None:
        # Rows past the real vocabulary pad the unembedding to a multiple of the model axis;
        # they must not count in the normaliser. After the softcap, which would map -inf to
        # -softcap.
        index = offset + jnp.arange(logits.shape[1])
        logits = jnp.where(index[None, :] < vocab_size, logits, -jnp.inf)
    return logits


def _update(carry, logits: jax.Array, targets: jax.Array, offset):
    running_max, running_sum, target_logit, *best = carry
    tile = logits.shape[1]
    tile_max = jnp.max(logits, axis=1)
    new_max = jnp.maximum(running_max, tile_max)
    if best:
        # Strictly greater: an equal maximum in a later tile leaves the earlier, lower index.
        tile_best = offset + jnp.argmax(logits, axis=1).astype(jnp.int32)
        best = [jnp.where(tile_max > running_max, tile_best, best[0])]
    # A tile of padding rows leaves the maximum at -inf; shifting by 0 there keeps exp(-inf -
    # -inf) = nan out of the sum.
    shift = jnp.where(jnp.isneginf(new_max), 0.0, new_max)
    running_sum = running_sum * jnp.exp(running_max - shift) + jnp.sum(
        jnp.exp(logits - shift[:, None]), axis=1
    )
    local = targets - offset
    in_tile = (local >= 0) & (local < tile)
    picked = jnp.take_along_axis(logits, jnp.clip(local, 0, tile - 1)[:, None], axis=1)[:, 0]
    target_logit = jnp.where(in_tile, picked, target_logit)
    return (new_max, running_sum, target_logit, *best)


def _walk_vocabulary(
    hidden: jax.Array,
    unembedding: jax.Array,
    bias: jax.Array | None,
    targets: jax.Array,
    tile: int,
    softcap: float | None,
    base=0,
    vocab_size: int | None = None,
    varying: tuple[str, ...] = (),
    with_argmax: bool = False,
):
    """Running (max, sum, target logit) over ``unembedding``'s rows (plus ``bias``, one entry
    per row, if any), which are the vocabulary entries ``base ...``; the target logit stays 0
    where the target is not among them. ``with_argmax`` adds the index of the first largest
    logit (int32).

    Inside ``shard_map``, ``varying`` names the mesh axes the result differs over (the scan's
    carry must be typed that way from the start).
    """
    count = hidden.shape[0]
    rows = unembedding.shape[0]
    tile = min(tile, rows)
    full_tiles, remainder = divmod(rows, tile)
    carry = (
        jnp.full((count,), -jnp.inf, jnp.float32),
        jnp.zeros((count,), jnp.float32),
        jnp.zeros((count,), jnp.float32),
    ) + ((jnp.zeros((count,), jnp.int32),) if with_argmax else ())
    if varying:
        carry = tuple(jax.lax.pcast(part, varying, to="varying") for part in carry)

    def step(carry, index):
        start = index * tile
        weights = jax.lax.dynamic_slice_in_dim(unembedding, start, tile, axis=0)
        tile_bias = None if bias is None else jax.lax.dynamic_slice_in_dim(bias, start, tile)
        logits = _tile_logits(hidden, weights, tile_bias, softcap, base + start, vocab_size)
        return _update(carry, logits, targets, base + start), None

    carry, _ = jax.lax.scan(step, carry, jnp.arange(full_tiles))
    if remainder:
        start = full_tiles * tile
        tail_bias = None if bias is None else bias[start:]
        logits = _tile_logits(
            hidden, unembedding[start:], tail_bias, softcap, base + start, vocab_size
        )
        carry = _update(carry, logits, targets, base + start)
    return carry


def token_logprobs(
    hidden: jax.Array,
    unembedding: jax.Array,
    targets: jax.Array,
    *,
    tile: int = DEFAULT_TILE,
    softcap: float | None = None,
    bias: jax.Array | None = None,
    with_argmax: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """log p(targets) under softmax(hidden @ unembeddingᵀ + bias), as float32 [N].

    hidden: [N, D] (any float dtype; cast to the unembedding's dtype for the matmul, with
    float32 accumulation). unembedding: [V, D]. targets: [N] int. bias: optional [V], added in
    float32 before the soft-cap. ``with_argmax`` also returns the argmax of every row's logits
    (int32 [N], the lowest index among ties).
    """
    running_max, running_sum, target_logit, *best = _walk_vocabulary(
        hidden, unembedding, bias, targets, tile, softcap, with_argmax=with_argmax
    )
    logprobs = target_logit - (running_max + jnp.log(running_sum))
    return (logprobs, best[0]) if with_argmax else logprobs


def sharded_token_logprobs(
    hidden: jax.Array,
    unembedding: jax.Array,
    targets: jax.Array,
    *,
    mesh: Mesh,
    vocab_size: int,
    tile: int = DEFAULT_TILE,
    softcap: float | None = None,
    bias: jax.Array | None = None,
    data_axis: str = "data",
    model_axis: str = "model",
    with_argmax: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """:func:`token_logprobs` with the vocabulary split over ``mesh``'s model axis.

    unembedding: [V', D] with V' ≥ ``vocab_size`` a multiple of the model axis size; rows from
    ``vocab_size`` on are padding and never count. hidden [N, D] and targets [N] are split over
    the data axis (N must be a multiple of its size). ``bias`` (optional, [V']) is split over the
    model axis like the unembedding's rows. Returns float32 [N], split over the data axis (and
    with ``with_argmax`` the int32 [N] argmax, as :func:`token_logprobs`). No shard ever holds
    more than [N / data, tile] logits.
    """
    padded = unembedding.shape[0]
    shards = mesh.shape[model_axis]
    if padded % shards or padded < vocab_size:
        raise ValueError(
            f"unembedding rows ({padded}) must be a multiple of the model axis ({shards}) "
            f"and cover the vocabulary ({vocab_size})"
        )
    local_rows = padded // shards
    mask = vocab_size if padded > vocab_size else None

    if bias is not None and bias.shape != (padded,):
        raise ValueError(f"bias has shape {bias.shape}, the unembedding {padded} rows")

    def shard(hidden, unembedding, targets, *bias):
        base = jax.lax.axis_index(model_axis) * local_rows
        local_max, local_sum, local_target, *local_best = _walk_vocabulary(
            hidden, unembedding, bias[0] if bias else None, targets, tile, softcap, base, mask,
            (data_axis, model_axis), with_argmax,
        )
        # Every shard holds real rows or padding only (whose maximum is -inf and sum 0); the
        # global maximum is finite because shard 0 always holds real rows.
        global_max = jax.lax.pmax(local_max, model_axis)
        total = jax.lax.psum(local_sum * jnp.exp(local_max - global_max), model_axis)
        # Exactly one shard holds each target; the others carry 0.
        target_logit = jax.lax.psum(local_target, model_axis)
        logprobs = target_logit - (global_max + jnp.log(total))
        if not with_argmax:
            return logprobs
        # The lowest index among the shards holding the global maximum: shards hold ascending
        # index ranges, so that is the first largest entry overall.
        holds_max = local_max == global_max
        best = jnp.where(holds_max, local_best[0], jnp.iinfo(jnp.int32).max)
        return logprobs, jax.lax.pmin(best, model_axis)

    operands = (hidden, unembedding, targets)
    specs = (P(data_axis, None), P(model_axis, None), P(data_axis))
    if bias is not None:
        operands, specs = (*operands, bias), (*specs, P(model_axis))
    out_specs = (P(data_axis), P(data_axis)) if with_argmax else P(data_axis)
    return jax.shard_map(shard, mesh=mesh, in_specs=specs, out_specs=out_specs)(*operands)
