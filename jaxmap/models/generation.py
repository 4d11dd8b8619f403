"""Autoregressive sampling with a key/value cache, jitted: the decode path of the decoder.

A run is one compiled function: a prefill (one forward over the prompt's P positions that writes
every layer's keys and values into a cache preallocated for the whole sequence) and a
``lax.scan`` of decode steps, each feeding the token just sampled at its position, writing its
keys and values into the cache and sampling the next token. Both reuse the decoder's own
:func:`~jaxmap.models.decoder.block` with an attention function over the cache, so every variant
the decoder scores (rope with several tables, learned positions, ALiBi, sliding windows,
soft-caps, parallel residuals, sandwich and post norms, experts) decodes with the same
arithmetic; the tests hold the cached logits to the full forward's within 1e-5.

Sampling is from the full softmax of the final logits divided by the temperature (no top-k, no
top-p): at temperature 1 the samples are draws from the model's own distribution, as a Monte
Carlo KL needs (:mod:`jaxmap.analysis.true_kl`).

Cache layout: keys and values [L, B, S, Hkv, hd] float32, S = P + length - 1 (the last sampled
token is never fed back). Each step attends over all S slots with causality masking the ones
not yet written, so a step costs O(S) whatever its position: simple and shape-stable, and cheap
at the lengths a KL estimate samples.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import JaxmapError
from .attention import dense_attention
from .decoder import (
    DecoderConfig,
    Params,
    alibi_bias,
    attention_output,
    block,
    compute_dtype,
    embed,
    final_norm,
    project_qkv,
    rope_angles,
    scan_layers,
    unembedding,
    unembedding_bias,
)


class KVCache(NamedTuple):
    """Every layer's keys and values, [L, B, S, Hkv, hd] float32; slot s holds position s."""

    keys: jax.Array
    values: jax.Array


def empty_cache(config: DecoderConfig, batch: int, size: int) -> KVCache:
    """A zeroed cache for ``batch`` rows of ``size`` positions."""
    shape = (config.num_layers, batch, size, config.num_kv_heads, config.head_dim)
    return KVCache(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))


def check_length(config: DecoderConfig, total: int) -> None:
    """Refuse a sequence of ``total`` positions (prompt and samples) the model cannot decode.

    Beyond ``max_positions`` the model has no positions (or was never trained there). Rope
    tables whose frequencies depend on the sequence's final length (LongRoPE, dynamic NTK)
    change every earlier position's angles once the sequence outgrows their original context,
    so cached keys would be wrong; below that context they use their fixed frequencies.
    """
    if total > config.max_positions:
        raise JaxmapError(
            f"prompt and samples need {total} positions; the model has {config.max_positions}"
        )
    for table in config.rope_tables:
        if table.length_dependent and total > table.original_context:
            raise JaxmapError(
                f"prompt and samples need {total} positions, beyond this model's original rope "
                f"context of {table.original_context}: its rope frequencies then depend on the "
                "final length, which a cached decode does not know in advance"
            )


def _angles(config: DecoderConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """cos, sin [tables, 1, T, rotary_dim] at ``positions`` [1, T] and the table per layer."""
    if config.position == "rope":
        # check_length keeps length-dependent tables below their original context, where they
        # use their fixed frequencies: no lengths needed.
        cos, sin = rope_angles(config, positions)
        return cos, sin, jnp.asarray(config.layer_rope, jnp.int32)
    empty = jnp.zeros((1, 1, positions.shape[1], 0), jnp.float32)
    return empty, empty, jnp.zeros((config.num_layers,), jnp.int32)


def _forward(
    params: Params, tokens: jax.Array, offset, cache: KVCache, config: DecoderConfig
) -> tuple[jax.Array, KVCache]:
    """Run ``tokens`` [B, T] at positions offset … offset+T-1 over the cache: final-normed
    hidden states [B, T, D] and the cache with their keys and values written."""
    length = tokens.shape[1]
    positions = (offset + jnp.arange(length, dtype=jnp.int32))[None]
    x = embed(params, tokens, config, positions)
    cos, sin, rope_index = _angles(config, positions)
    windows = jnp.asarray(config.windows, jnp.int32)
    bias = alibi_bias(config)

    def step(carry, scanned):
        x, keys, values = carry
        layer, table, window, index = scanned

        def attention(normed, layer):
            q, k, v = project_qkv(normed, layer, config, cos[table], sin[table])
            start = (0, offset, 0, 0)
            layer_keys = jax.lax.dynamic_update_slice(keys[index], k, start)
            layer_values = jax.lax.dynamic_update_slice(values[index], v, start)
            context = dense_attention(
                q, layer_keys, layer_values, window=window, softcap=config.attn_logit_softcap,
                bias=bias, compute_dtype=compute_dtype(layer), query_offset=offset,
            )
            return attention_output(context, layer), (k, v)

        x, (k, v) = block(x, layer, config, attention)
        keys = jax.lax.dynamic_update_slice(keys, k[None], (index, 0, offset, 0, 0))
        values = jax.lax.dynamic_update_slice(values, v[None], (index, 0, offset, 0, 0))
        return (x, keys, values), None

    layers = jnp.arange(config.num_layers, dtype=jnp.int32)
    (x, keys, values), _ = scan_layers(
        step, (x, cache.keys, cache.values), params, config, (rope_index, windows, layers)
    )
    return final_norm(params, x, config), KVCache(keys, values)


def _logits(params: Params, hidden: jax.Array, config: DecoderConfig) -> jax.Array:
    """Final logits [..., V] float32 from final-normed hidden states, padding rows left out,
    computed as the scoring kernel computes them (weights' dtype in, float32 out; bias, then
    soft-cap)."""
    weights = unembedding(params, config)[: config.vocab_size]
    logits = jnp.einsum(
        "...d,vd->...v", hidden.astype(weights.dtype), weights, preferred_element_type=jnp.float32
    )
    bias = unembedding_bias(params)
    if bias is not None:
        logits = logits + bias[: config.vocab_size].astype(jnp.float32)
    softcap = config.final_logit_softcap
    if softcap:
        logits = softcap * jnp.tanh(logits / softcap)
    return logits


@partial(jax.jit, static_argnames=("config", "prompt_length"))
def cached_logits(
    params: Params, tokens: jax.Array, config: DecoderConfig, prompt_length: int = 1
) -> jax.Array:
    """Teacher-forced decode: prefill ``tokens[:, :prompt_length]``, then feed the rest one
    token per step through the cache. Returns the next-token logits after every position
    [B, T, V] float32, the same quantity as a full forward's, for checking the decode path."""
    batch, length = tokens.shape
    cache = empty_cache(config, batch, length)
    hidden, cache = _forward(params, tokens[:, :prompt_length], 0, cache, config)
    first = _logits(params, hidden, config)

    def step(cache, scanned):
        token, position = scanned
        hidden, cache = _forward(params, token[:, None], position, cache, config)
        return cache, _logits(params, hidden[:, 0], config)

    rest = jnp.moveaxis(tokens[:, prompt_length:], 1, 0)
    positions = jnp.arange(prompt_length, length, dtype=jnp.int32)
    _, later = jax.lax.scan(step, cache, (rest, positions))
    return jnp.concatenate([first, jnp.moveaxis(later, 0, 1)], axis=1)


@partial(jax.jit, static_argnames=("config", "length"))
def _sample(params, prompt, key, temperature, config: DecoderConfig, length: int):
    batch, prompt_length = prompt.shape
    cache = empty_cache(config, batch, prompt_length + length - 1)
    hidden, cache = _forward(params, prompt, 0, cache, config)

    def draw(hidden, key):
        logprobs = jax.nn.log_softmax(_logits(params, hidden, config) / temperature, axis=-1)
        token = jax.random.categorical(key, logprobs, axis=-1).astype(jnp.int32)
        return token, jnp.take_along_axis(logprobs, token[:, None], axis=-1)[:, 0]

    keys = jax.random.split(key, length)
    token, logprob = draw(hidden[:, -1], keys[0])

    def step(carry, scanned):
        cache, token = carry
        position, key = scanned
        hidden, cache = _forward(params, token[:, None], position, cache, config)
        token, logprob = draw(hidden[:, 0], key)
        return (cache, token), (token, logprob)

    positions = jnp.arange(prompt_length, prompt_length + length - 1, dtype=jnp.int32)
    _, (tokens, logprobs) = jax.lax.scan(step, (cache, token), (positions, keys[1:]))
    tokens = jnp.concatenate([token[None], tokens], axis=0)
    logprobs = jnp.concatenate([logprob[None], logprobs], axis=0)
    return jnp.moveaxis(tokens, 0, 1), jnp.moveaxis(logprobs, 0, 1)


def sample(
    params: Params,
    config: DecoderConfig,
    prompt_tokens,
    length: int,
    key: jax.Array,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Sample ``length`` tokens after each row of ``prompt_tokens`` [B, P] (every row P tokens).

    Each token is drawn from the full softmax of the model's logits divided by ``temperature``
    (``jax.random.categorical``; no top-k or top-p), so at temperature 1 a row is a draw from
    the model's distribution over continuations. Returns the sampled tokens [B, length] int32
    and each one's log-probability under the distribution it was drawn from [B, length]
    float32. Compiled once per config, batch shape and length; ``key`` is a JAX PRNG key.
    """
    prompt = jnp.asarray(prompt_tokens, jnp.int32)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise JaxmapError(f"prompt_tokens must be [batch, positions] with a position, got {prompt.shape}")
    if length < 1:
        raise JaxmapError(f"length must be at least 1, got {length}")
    if not np.isfinite(temperature) or temperature <= 0:
        raise JaxmapError(f"temperature must be a positive number, got {temperature}")
    check_length(config, prompt.shape[1] + length)
    return _sample(params, prompt, key, jnp.float32(temperature), config, int(length))
