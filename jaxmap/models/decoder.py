"""One configurable decoder-only transformer, as pure functions over a params pytree.

Every supported Hugging Face architecture is this decoder with a different
:class:`DecoderConfig` and a weight-name map (see the adapters beside this file).

The params pytree's layout (every parameter's path, shape, dtype and whether a config has it) is
one table, :data:`jaxmap.models.layout.LAYOUT`: linear weights are ``[in, out]`` so the hot loop
multiplies without transposes, layer params are stacked over a leading layer axis, and norm
scales, biases and the residual stream stay float32 whatever the weights' dtype; matmuls take
weights in the params' dtype and accumulate in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from .attention import attend, choose_path

Params = dict


@dataclass(frozen=True)
class RopeTable:
    """Rotary frequencies for one group of layers (inverse frequencies in float32 order).

    ``attention_factor`` scales cos and sin (YaRN, LongRoPE). Most scalings give every sequence
    the same ``inv_freq``; two depend on the sequence's length, as transformers'
    ``dynamic_rope_update`` does, and the decoder picks per row from the row's length:

    * LongRoPE: ``long_inv_freq`` replaces ``inv_freq`` for rows longer than
      ``original_context``;
    * dynamic NTK (``ntk_factor``): rows longer than ``original_context`` get frequencies
      recomputed from base ``theta`` and their own length.
    """

    inv_freq: tuple[float, ...]
    attention_factor: float = 1.0
    original_context: int = 0
    long_inv_freq: tuple[float, ...] = ()
    ntk_factor: float = 0.0
    theta: float = 0.0

    def __post_init__(self) -> None:
        if self.long_inv_freq and len(self.long_inv_freq) != len(self.inv_freq):
            raise ValueError("long_inv_freq needs one entry per frequency")
        if (self.long_inv_freq or self.ntk_factor) and self.original_context <= 0:
            raise ValueError("a length-dependent rope table needs original_context")

    @property
    def length_dependent(self) -> bool:
        """Whether a row's frequencies depend on the row's length."""
        return bool(self.long_inv_freq) or bool(self.ntk_factor)


@dataclass(frozen=True)
class DecoderConfig:
    """Everything the decoder needs besides the weights. Hashable: it is a static jit argument."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    norm: Literal["rms", "layer"]
    norm_eps: float
    activation: Literal["silu", "gelu", "gelu_tanh", "relu"]
    gated_mlp: bool
    position: Literal["rope", "learned", "alibi"]
    attn_scale: float
    tie_embeddings: bool
    rotary_dim: int = 0
    rope_tables: tuple[RopeTable, ...] = ()
    layer_rope: tuple[int, ...] = ()
    layer_window: tuple[int, ...] = ()
    parallel_residual: bool = False
    qk_norm: bool = False
    sandwich_norm: bool = False
    # Post-norm blocks (OPT-350m): x = norm(x + sublayer(x)) with the attn_norm/mlp_norm params.
    post_norm: bool = False
    # False: the last layer's output goes straight to the unembedding (final_norm params empty).
    has_final_norm: bool = True
    embed_scale: float | None = None
    final_logit_softcap: float | None = None
    attn_logit_softcap: float | None = None
    # ALiBi (position == "alibi"): each score gains alibi_scale * slope[head] * (key - query), one
    # slope per head. Relative to the query, this equals transformers' slope * key after the
    # softmax and stays right wherever a text starts in its row. alibi_bfloat16 is Falcon's
    # form: its slopes (rounded by the adapter), positions and slope * key products are bfloat16.
    alibi_slopes: tuple[float, ...] = ()
    alibi_scale: float = 1.0
    alibi_bfloat16: bool = False
    # Bloom: a norm (embed_norm params) applied right after the token embedding lookup.
    embed_norm: bool = False
    # False: sublayers read the residual stream un-normed (OLMo2, which norms only their outputs
    # with sandwich_norm's post norms); attn_norm/mlp_norm params are then absent.
    pre_norm: bool = True
    # q/k norms over each head's head_dim ("head": Qwen3, Gemma3) or over the whole projected
    # width before it is split into heads ("full": OLMo2; q_norm [H*hd], k_norm [Hkv*hd]).
    qk_norm_scope: Literal["head", "full"] = "head"
    # OLMo: q, k and v clamped to [-clip_qkv, clip_qkv] right after their projections.
    clip_qkv: float | None = None
    # Mixture-of-experts MLP (num_experts > 0): a router picks experts_per_token experts per
    # token (softmax, top-k, renormalised when normalize_expert_weights); the experts are gated
    # MLPs expert_intermediate_size wide. shared_expert adds the dense gate/up/down MLP
    # (intermediate_size wide) scaled by sigmoid(x @ shared_gate) (Qwen2-MoE).
    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    normalize_expert_weights: bool = False
    shared_expert: bool = False
    # DeepSeek's routing, on top of the above: the router scores by softmax or sigmoid; with
    # expert_groups > 1 the experts are split into that many equal groups, each token keeps the
    # groups_per_token groups of highest group score ("max": the group's best expert, DeepSeek-V2;
    # "top2_sum": its two best, DeepSeek-V3) and picks its experts among those alone;
    # router_choice_bias adds a learned per-expert bias (router.choice_bias) to the scores for
    # the choice only (V3's e_score_correction_bias), the weights stay the unbiased scores; the
    # kept weights are multiplied by routed_scale. An ungated shared expert is added unscaled.
    router_scoring: Literal["softmax", "sigmoid"] = "softmax"
    expert_groups: int = 0
    groups_per_token: int = 0
    group_score: Literal["max", "top2_sum"] = "max"
    router_choice_bias: bool = False
    routed_scale: float = 1.0
    shared_expert_gated: bool = True
    # The first dense_layers layers have a dense gated MLP dense_intermediate_size wide instead
    # of experts (DeepSeek's first_k_dense_replace). Their params are a stack of their own,
    # params["dense_layers"], scanned before params["layers"] (a scan needs layers of one shape).
    dense_layers: int = 0
    dense_intermediate_size: int = 0
    # Multi-head latent attention (kv_lora_rank > 0; DeepSeek-V2/V3): keys and values are
    # expanded per head (kv_b) from a normed latent of kv_lora_rank features (kv_a's first
    # columns), queries come from q or through a normed q_lora_rank latent (q_a, q_b). Each
    # head is [nope | rope] head_dim wide, its last rotary_dim features rotated; the rope part of
    # the keys is one projection shared by all heads (kv_a's last columns). Values are
    # value_head_dim wide (v_head_dim, 0: head_dim), zero-padded to head_dim for the attention
    # paths, which take one width. latent_norm_eps is the latents' RMSNorm epsilon.
    # rope_interleaved: the rope features rotate in adjacent pairs (x0, x1), (x2, x3), ...
    # (DeepSeek's layout) rather than as halves; they are reordered evens then odds, for queries
    # and keys alike, which leaves every score unchanged and makes the rotation rotate-half's.
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    v_head_dim: int = 0
    latent_norm_eps: float = 1e-6
    rope_interleaved: bool = False
    # How attention is computed, not what (every path gives the same scores up to float32
    # rounding): "auto" picks per backend and row length (jaxmap.models.attention.choose_path).
    attention: Literal["auto", "dense", "blockwise", "xla_fused", "pallas"] = "auto"
    # How the engine turns last hidden states into the targets' log-probs, not what: "fused" is
    # the pure-JAX vocab-tiled kernel (jaxmap.kernels.fused_logprob), "pallas" the hand-written
    # one (jaxmap.kernels.pallas_logprob; one device, no gradient).
    logprob: Literal["fused", "pallas"] = "fused"

    def __post_init__(self) -> None:
        if self.num_experts and not (
            0 < self.experts_per_token <= self.num_experts
            and self.expert_intermediate_size > 0
            and self.gated_mlp
        ):
            raise ValueError(
                "experts need 0 < experts_per_token <= num_experts, a width and a gated MLP"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if self.expert_groups > 1 and not (
            self.num_experts % self.expert_groups == 0
            and 0 < self.groups_per_token <= self.expert_groups
            and self.experts_per_token <= self.groups_per_token * self.num_experts // self.expert_groups
        ):
            raise ValueError(
                "expert groups must divide the experts and keep experts_per_token experts to choose from"
            )
        if self.dense_layers and not (
            self.num_experts and 0 < self.dense_layers < self.num_layers and self.dense_intermediate_size > 0
        ):
            raise ValueError("dense_layers go before expert layers and need a width")
        if self.rope_interleaved and not self.kv_lora_rank:
            raise ValueError("interleaved rope is implemented for latent attention only")
        if self.kv_lora_rank and not (
            self.position == "rope" and self.num_kv_heads == self.num_heads
            and 0 < self.value_head_dim <= self.head_dim
        ):
            raise ValueError(
                "latent attention needs rope, a key/value head per head and values no wider than head_dim"
            )
        if self.post_norm and self.parallel_residual:
            raise ValueError("post_norm blocks are sequential")
        if len(self.layer_window) not in (0, self.num_layers):
            raise ValueError("layer_window needs one entry per layer")
        if (self.position == "alibi") != bool(self.alibi_slopes) or (
            self.alibi_slopes and len(self.alibi_slopes) != self.num_heads
        ):
            raise ValueError("alibi needs one slope per head, and slopes only go with alibi")
        if self.position == "rope":
            if not self.rope_tables or len(self.layer_rope) != self.num_layers:
                raise ValueError("rope needs rope_tables and one layer_rope entry per layer")
            if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
                raise ValueError("rotary_dim must be even and within head_dim")

    @property
    def value_head_dim(self) -> int:
        """The width of each head's values (the attention context), head_dim unless latent
        attention sets it."""
        return self.v_head_dim or self.head_dim

    @property
    def windows(self) -> tuple[int, ...]:
        """Per-layer sliding window (0 means full causal attention)."""
        return self.layer_window or (0,) * self.num_layers


def _norm(x: jax.Array, params: dict, config: DecoderConfig, eps: float | None = None) -> jax.Array:
    x = x.astype(jnp.float32)
    eps = config.norm_eps if eps is None else eps
    if config.norm == "rms":
        variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        out = x * jax.lax.rsqrt(variance + eps)
    else:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        centred = x - mean
        variance = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        out = centred * jax.lax.rsqrt(variance + eps)
    out = out * params["scale"]
    if "bias" in params:
        out = out + params["bias"]
    return out


def _linear(x: jax.Array, params: dict) -> jax.Array:
    kernel = params["kernel"]
    out = jnp.einsum(
        "...i,io->...o", x.astype(kernel.dtype), kernel, preferred_element_type=jnp.float32
    )
    if "bias" in params:
        out = out + params["bias"]
    return out


def _activation(x: jax.Array, name: str) -> jax.Array:
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu(x)
    raise ValueError(f"unknown activation {name!r}")


def _token_inv_freq(table: RopeTable, lengths: jax.Array | None) -> jax.Array:
    """The table's inverse frequencies per token: [B, T, rotary_dim / 2] from per-token sequence
    ``lengths`` [B, T], or [1, 1, ...] when they do not depend on the length."""
    fixed = jnp.asarray(np.array(table.inv_freq, np.float32))[None, None]
    if not table.length_dependent or lengths is None:
        return fixed
    longer = (lengths > table.original_context)[..., None]
    if table.long_inv_freq:
        long_inv_freq = jnp.asarray(np.array(table.long_inv_freq, np.float32))[None, None]
        return jnp.where(longer, long_inv_freq, fixed)
    # Dynamic NTK as transformers recomputes it for a longer sequence, in float32 like its
    # tensors: base * (factor * length / context - (factor - 1)) ** (dim / (dim - 2)).
    dim = 2 * len(table.inv_freq)
    factor = np.float32(table.ntk_factor)
    length = jnp.maximum(lengths, table.original_context).astype(jnp.float32)
    growth = (factor * length / np.float32(table.original_context) - (factor - 1)) ** np.float32(dim / (dim - 2))
    base = np.float32(table.theta) * growth
    exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / np.float32(dim)
    return jnp.where(longer, 1.0 / base[..., None] ** exponents, fixed)


def rope_angles(
    config: DecoderConfig, positions: jax.Array, lengths: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """cos and sin for every rope table at ``positions`` ([B or 1, T]): [tables, B or 1, T,
    rotary_dim] in float32. ``lengths`` [B, T] is the length of the sequence each token
    belongs to, for tables that depend on it."""
    inv_freq = [_token_inv_freq(table, lengths) for table in config.rope_tables]
    angles = [positions.astype(jnp.float32)[..., None] * f for f in inv_freq]
    shape = jnp.broadcast_shapes(*(a.shape for a in angles))
    angles = jnp.stack([jnp.broadcast_to(a, shape) for a in angles])
    factor = jnp.asarray(np.array([t.attention_factor for t in config.rope_tables], np.float32))
    angles = jnp.concatenate([angles, angles], axis=-1)
    scale = factor[:, None, None, None]
    return jnp.cos(angles) * scale, jnp.sin(angles) * scale


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, rotary_dim: int) -> jax.Array:
    """Rotate-half rotary embedding on the first ``rotary_dim`` features of each head.

    x: [B, T, heads, head_dim]; cos, sin: [B or 1, T, rotary_dim] (or [T, rotary_dim]).
    """
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    swapped = jnp.concatenate([-rotated[..., half:], rotated[..., :half]], axis=-1)
    rotated = rotated * cos[..., None, :] + swapped * sin[..., None, :]
    return jnp.concatenate([rotated, passed], axis=-1) if passed.shape[-1] else rotated


def _round_to_bfloat16(x: jax.Array) -> jax.Array:
    return x.astype(jnp.bfloat16).astype(jnp.float32)


def alibi_bias(config: DecoderConfig):
    """The ALiBi score bias as a function of query and key positions (int arrays that
    broadcast to [Q, K]), returning [Hkv, group, Q, K] float32 for scores laid out
    [B, Hkv, group, Q, K]; None without ALiBi.

    Head h = kv_head * group + g has slope ``alibi_slopes[h]``, the decoder's (and HF's) head
    order. Built from config constants inside the jitted forward, so on a mesh the partitioner
    slices it with the heads it belongs to; built from positions, so the blockwise attention
    path makes it one block at a time.
    """
    if config.position != "alibi":
        return None
    group = config.num_heads // config.num_kv_heads
    slopes = np.asarray(config.alibi_slopes, np.float32).reshape(config.num_kv_heads, group, 1, 1)

    def bias(query_pos: jax.Array, key_pos: jax.Array) -> jax.Array:
        query_pos, key_pos = query_pos.astype(jnp.float32), key_pos.astype(jnp.float32)
        if config.alibi_bfloat16:
            # Falcon's bias of key k is bfloat16(slope * bfloat16(k)); both factors are
            # bfloat16 numbers, so their float32 product is exact and only the final rounding
            # is left.
            def per_position(position):
                return _round_to_bfloat16(slopes * _round_to_bfloat16(position))

            out = per_position(key_pos) - per_position(query_pos)
        else:
            out = slopes * (key_pos - query_pos)
        return out * config.alibi_scale

    return bias


def project_qkv(
    x: jax.Array, layer: dict, config: DecoderConfig, cos: jax.Array, sin: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A layer's queries [B, T, Hkv, G, hd] (times the attention scale), keys and values
    [B, T, Hkv, hd], float32, with q/k norms and rotary embeddings applied (``cos``, ``sin``:
    [B or 1, T, rotary_dim], unused without rope)."""
    if config.kv_lora_rank:
        return _latent_qkv(x, layer, config, cos, sin)
    batch, length, _ = x.shape
    heads, kv_heads, head_dim = config.num_heads, config.num_kv_heads, config.head_dim
    q, k, v = (_linear(x, layer[name]) for name in "qkv")
    if config.clip_qkv is not None:
        q, k, v = (jnp.clip(t, -config.clip_qkv, config.clip_qkv) for t in (q, k, v))
    if config.qk_norm and config.qk_norm_scope == "full":
        q = _norm(q, layer["q_norm"], config)
        k = _norm(k, layer["k_norm"], config)
    q = q.reshape(batch, length, heads, head_dim)
    k = k.reshape(batch, length, kv_heads, head_dim)
    v = v.reshape(batch, length, kv_heads, head_dim)
    if config.qk_norm and config.qk_norm_scope == "head":
        q = _norm(q, layer["q_norm"], config)
        k = _norm(k, layer["k_norm"], config)
    if config.position == "rope":
        q = _apply_rope(q, cos, sin, config.rotary_dim)
        k = _apply_rope(k, cos, sin, config.rotary_dim)
    q = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim) * config.attn_scale
    return q, k, v


def _latent_qkv(
    x: jax.Array, layer: dict, config: DecoderConfig, cos: jax.Array, sin: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`project_qkv` for multi-head latent attention (see DecoderConfig.kv_lora_rank)."""
    batch, length, _ = x.shape
    heads, head_dim, rope = config.num_heads, config.head_dim, config.rotary_dim
    nope = head_dim - rope
    if config.q_lora_rank:
        latent_q = _norm(_linear(x, layer["q_a"]), layer["q_a_norm"], config, config.latent_norm_eps)
        q = _linear(latent_q, layer["q_b"])
    else:
        q = _linear(x, layer["q"])
    q = q.reshape(batch, length, heads, head_dim)

    def rotate(features):
        if config.rope_interleaved:
            features = jnp.concatenate([features[..., 0::2], features[..., 1::2]], axis=-1)
        return _apply_rope(features, cos, sin, rope)

    q = jnp.concatenate([q[..., :nope], rotate(q[..., nope:])], axis=-1)
    compressed = _linear(x, layer["kv_a"])
    latent = _norm(compressed[..., : config.kv_lora_rank], layer["kv_a_norm"], config, config.latent_norm_eps)
    expanded = _linear(latent, layer["kv_b"]).reshape(batch, length, heads, nope + config.value_head_dim)
    shared_rope = rotate(compressed[..., None, config.kv_lora_rank :])
    k = jnp.concatenate(
        [expanded[..., :nope], jnp.broadcast_to(shared_rope, (batch, length, heads, rope))], axis=-1
    )
    v = expanded[..., nope:]
    v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, head_dim - v.shape[-1])))
    q = q.reshape(batch, length, heads, 1, head_dim) * config.attn_scale
    return q, k, v


def attention_output(context: jax.Array, layer: dict) -> jax.Array:
    """The output projection of an attention context [B, T, Hkv, G, hd]: [B, T, D]. Values
    narrower than hd (latent attention) were zero-padded; the padding is dropped here."""
    batch, length, kv_heads, group, head_dim = context.shape
    value_dim = layer["o"]["kernel"].shape[0] // (kv_heads * group)
    return _linear(context[..., :value_dim].reshape(batch, length, -1), layer["o"])


def compute_dtype(layer: dict):
    """The dtype a layer's attention matmuls take (its weights')."""
    return layer["o"]["kernel"].dtype


def _self_attention(
    x: jax.Array,
    layer: dict,
    config: DecoderConfig,
    cos: jax.Array,
    sin: jax.Array,
    window: jax.Array,
    segment_ids: jax.Array | None,
) -> jax.Array:
    q, k, v = project_qkv(x, layer, config, cos, sin)
    dtype = compute_dtype(layer)
    path = attention_path(config, x.shape[1], dtype, packed=segment_ids is not None)
    slopes = None
    if path == "pallas" and config.position == "alibi":
        slopes = jnp.asarray(np.asarray(config.alibi_slopes, np.float32) * config.alibi_scale)
    context = attend(
        q, k, v, window=window, softcap=config.attn_logit_softcap, bias=alibi_bias(config),
        compute_dtype=dtype, static_window=config.windows[0], segment_ids=segment_ids,
        path=path, alibi_slopes=slopes,
    )
    return attention_output(context, layer)


def attention_path(config: DecoderConfig, length: int, compute_dtype, packed: bool) -> str:
    """The attention path the decoder takes for rows of ``length``
    (:func:`jaxmap.models.attention.choose_path` on this model's variant); raises ValueError
    when ``config.attention`` names a path that cannot compute it."""
    return choose_path(
        config.attention, length, config.windows, config.attn_logit_softcap,
        config.position == "alibi", compute_dtype, packed=packed,
        rounded_alibi=config.alibi_bfloat16,
    )


def _mlp(x: jax.Array, layer: dict, config: DecoderConfig) -> jax.Array:
    # By the params, not the config: dense_layers have no experts in a mixture-of-experts model.
    if "experts" in layer:
        return _mixture_of_experts(x, layer, config)
    return _dense_mlp(x, layer, config)


def _dense_mlp(x: jax.Array, layer: dict, config: DecoderConfig) -> jax.Array:
    up = _linear(x, layer["up"])
    if config.gated_mlp:
        hidden = _activation(_linear(x, layer["gate"]), config.activation) * up
    else:
        hidden = _activation(up, config.activation)
    return _linear(hidden, layer["down"])


def expert_weights(x: jax.Array, router: dict, config: DecoderConfig) -> jax.Array:
    """Each token's weight per expert [..., E] (float32): the router's scores (softmax or
    sigmoid of its logits) of the ``experts_per_token`` experts :func:`_route` picks
    (renormalised to sum 1 when ``normalize_expert_weights``, times ``routed_scale``), zero for
    every other expert.

    ``lax.top_k`` breaks exact ties by the lower expert index; ``torch.topk``'s order among
    equal values is unspecified (on CPU it does not pick the lowest index), so a tie may route
    differently from transformers. Real-valued logits tie only when router rows are equal, which
    the adapters refuse. The router kernel is float32 whatever the params' dtype: it makes
    discrete choices, and rounding its logits would route some tokens to other experts than the
    float32 model does.
    """
    top, chosen = _route(x, router, config)
    # Each expert appears at most once among a token's top k, so this sum adds only zeros.
    one_hot = jax.nn.one_hot(chosen, config.num_experts, dtype=jnp.float32)
    return jnp.sum(one_hot * top[..., None], axis=-2)


def _route(x: jax.Array, router: dict, config: DecoderConfig) -> tuple[jax.Array, jax.Array]:
    """Each token's top ``experts_per_token`` weights (float32, renormalised when
    ``normalize_expert_weights``, times ``routed_scale``) and the experts they belong to, both
    [..., k]; chosen among the kept groups when ``expert_groups`` > 1, by the scores plus the
    choice bias when ``router_choice_bias``."""
    logits = jnp.einsum("...d,de->...e", x.astype(jnp.float32), router["kernel"])
    if config.router_scoring == "sigmoid":
        scores = jax.nn.sigmoid(logits)
    else:
        scores = jax.nn.softmax(logits, axis=-1)
    choice = scores + router["choice_bias"] if config.router_choice_bias else scores
    if config.expert_groups > 1:
        choice = _keep_top_groups(choice, config)
    _, chosen = jax.lax.top_k(choice, config.experts_per_token)
    top = jnp.take_along_axis(scores, chosen, axis=-1)
    if config.normalize_expert_weights:
        top = top / jnp.sum(top, axis=-1, keepdims=True)
    if config.routed_scale != 1.0:
        top = top * jnp.float32(config.routed_scale)
    return top, chosen


def _keep_top_groups(choice: jax.Array, config: DecoderConfig) -> jax.Array:
    """``choice`` [..., E] with every expert outside the token's ``groups_per_token`` best
    groups set to -inf. The config guarantees enough experts are left for the top k, so no
    masked expert is ever chosen (transformers' V2 masks with 0 instead, which then never wins
    either: softmax scores are positive)."""
    groups = choice.reshape(*choice.shape[:-1], config.expert_groups, -1)
    if config.group_score == "top2_sum":
        group_scores = jnp.sum(jax.lax.top_k(groups, 2)[0], axis=-1)
    else:
        group_scores = jnp.max(groups, axis=-1)
    _, kept = jax.lax.top_k(group_scores, config.groups_per_token)
    keep = jnp.sum(jax.nn.one_hot(kept, config.expert_groups, dtype=jnp.bool_), axis=-2) > 0
    return jnp.where(keep[..., None], groups, -jnp.inf).reshape(choice.shape)


MOE_TILE = 64


def choose_moe_dispatch(tokens: int, config: DecoderConfig) -> Literal["dense", "grouped"]:
    """How :func:`_mixture_of_experts` runs the routed experts on ``tokens`` tokens (a batch's,
    padding included): "grouped" (each token through its top k experts only,
    :func:`_grouped_experts`) when that runs at most 3/4 of the expert-MLP rows of "dense"
    (every expert on every token), else "dense". Both give the same result up to float32
    rounding. Measured on CPU (benchmarks/results/moe-dispatch-cpu-2core-2026-12-06.md):
    with equal rows (the parity tests' size) grouped is 1.6-2x slower (its sort, gathers and
    scan cost more than they save); with 3/4 of the rows (a scaled-down Mixtral layer, 128
    tokens) 1.1-1.8x faster; with 3/8 (512 tokens) 3-3.3x faster."""
    if 4 * moe_rows(tokens, config) <= 3 * tokens * config.num_experts:
        return "grouped"
    return "dense"


def _mixture_of_experts(x: jax.Array, layer: dict, config: DecoderConfig) -> jax.Array:
    """The routed experts' gated MLPs, weighted by :func:`expert_weights`, plus the gated shared
    expert if any, dispatched as :func:`choose_moe_dispatch` picks."""
    tokens = int(np.prod(x.shape[:-1]))
    if choose_moe_dispatch(tokens, config) == "grouped":
        out = _grouped_experts(x, layer, config)
    else:
        out = _dense_experts(x, layer, config)
    if config.shared_expert and config.shared_expert_gated:
        out = out + jax.nn.sigmoid(_linear(x, layer["shared_gate"])) * _dense_mlp(x, layer, config)
    elif config.shared_expert:
        out = out + _dense_mlp(x, layer, config)
    return out


def _dense_experts(x: jax.Array, layer: dict, config: DecoderConfig) -> jax.Array:
    """Dense dispatch: every expert runs on every token and the unselected ones get weight zero,
    so the result is exact but the expert MLPs cost num_experts / experts_per_token times the
    FLOPs of a sparse dispatch (4x for Mixtral's 8 experts, top 2; 16x for Qwen3-MoE's 128,
    top 8), and a [tokens, num_experts * expert_intermediate_size] activation is held. The
    weighting is applied before the down projection, so that all experts' down projections are
    one matmul contracting over experts and columns together.
    """
    experts = layer["experts"]
    dtype = experts["gate"].dtype
    inputs = x.astype(dtype)
    gate = jnp.einsum("...d,edi->...ei", inputs, experts["gate"], preferred_element_type=jnp.float32)
    up = jnp.einsum("...d,edi->...ei", inputs, experts["up"], preferred_element_type=jnp.float32)
    weights = expert_weights(x, layer["router"], config)
    hidden = _activation(gate, config.activation) * up * weights[..., None]
    return jnp.einsum(
        "...ei,eid->...d", hidden.astype(dtype), experts["down"], preferred_element_type=jnp.float32
    )


def _grouped_experts(
    x: jax.Array, layer: dict, config: DecoderConfig, tile: int = MOE_TILE
) -> jax.Array:
    """Grouped dispatch (sort and segment): the tokens' (token, expert) assignments, k per token,
    sorted by expert, each expert's group padded to whole tiles of ``tile`` rows; a scan over
    the tiles runs each tile's rows through its one expert's gated MLP, and the weighted outputs
    are added back to their tokens. Shapes are static: ceil(tokens * k / tile) + num_experts
    tiles bound every routing, so the expert MLPs cost about k / num_experts of the dense
    dispatch's FLOPs plus up to num_experts + 1 tiles of padding (see :func:`moe_rows`).
    Padding rows and unused tiles read token 0 with weight 0; every token is routed (padding
    tokens too: finite inputs, finite outputs).

    ``lax.ragged_dot`` would do the same in one call, but on CPU (jax 0.10) it lowers to a
    masked dense matmul over all experts, slower than the dense dispatch
    (benchmarks/results/moe-dispatch-cpu-2core-2026-12-06.md).
    """
    experts = layer["experts"]
    dtype = experts["gate"].dtype
    k, count = config.experts_per_token, config.num_experts
    flat = x.reshape(-1, x.shape[-1])
    top, chosen = _route(flat, layer["router"], config)
    assigned = chosen.reshape(-1)
    order = jnp.argsort(assigned, stable=True)
    by_expert = assigned[order]
    sizes = jnp.bincount(assigned, length=count)
    padded = (sizes + tile - 1) // tile * tile
    padded_end = jnp.cumsum(padded)
    # Each assignment's place in the padded layout: its expert's padded start plus its rank
    # among that expert's assignments.
    rank = jnp.arange(assigned.size) - (jnp.cumsum(sizes) - sizes)[by_expert]
    slot = (padded_end - padded)[by_expert] + rank
    tiles = moe_rows(flat.shape[0], config, tile) // tile
    rows = tiles * tile
    token = jnp.zeros(rows, jnp.int32).at[slot].set((order // k).astype(jnp.int32))
    weight = jnp.zeros(rows, jnp.float32).at[slot].set(top.reshape(-1)[order])
    tile_expert = jnp.minimum(
        jnp.searchsorted(padded_end, jnp.arange(tiles) * tile, side="right"), count - 1
    )
    inputs = flat.astype(dtype)[token].reshape(tiles, tile, -1)

    def one_tile(_, item):
        rows_in, expert, w = item
        gate = jnp.dot(rows_in, experts["gate"][expert], preferred_element_type=jnp.float32)
        up = jnp.dot(rows_in, experts["up"][expert], preferred_element_type=jnp.float32)
        hidden = _activation(gate, config.activation) * up * w[:, None]
        down = jnp.dot(
            hidden.astype(dtype), experts["down"][expert], preferred_element_type=jnp.float32
        )
        return None, down

    _, outputs = jax.lax.scan(one_tile, None, (inputs, tile_expert, weight.reshape(tiles, tile)))
    out = jnp.zeros(flat.shape, jnp.float32).at[token].add(outputs.reshape(rows, -1))
    return out.reshape(x.shape)


def moe_rows(tokens: int, config: DecoderConfig, tile: int = MOE_TILE) -> int:
    """Rows the grouped dispatch runs through expert MLPs for ``tokens`` tokens (the dense
    dispatch runs tokens * num_experts)."""
    return (-(-tokens * config.experts_per_token // tile) + config.num_experts) * tile


def _input_norm(x: jax.Array, params: dict | None, config: DecoderConfig) -> jax.Array:
    """A sublayer's input: normed, except in post-norm blocks, which norm after the residual add,
    and in blocks without pre-norms (``params`` is then None)."""
    return x if config.post_norm or not config.pre_norm else _norm(x, params, config)


def block(x: jax.Array, layer: dict, config: DecoderConfig, attention) -> tuple[jax.Array, object]:
    """One decoder layer on the residual stream ``x`` [B, T, D]: the new stream and whatever
    ``attention`` returned beside its output.

    ``attention(normed_x, layer) -> (out [B, T, D], extra)`` is the layer's attention, so that
    scoring (self-attention over the row) and decoding (attention over a key/value cache, whose
    updated entries are the extra) share every other part of the block."""
    attended, extra = attention(_input_norm(x, layer.get("attn_norm"), config), layer)
    if config.sandwich_norm:
        attended = _norm(attended, layer["attn_post_norm"], config)
    if config.parallel_residual:
        return x + attended + _mlp(_input_norm(x, layer.get("mlp_norm"), config), layer, config), extra
    x = x + attended
    if config.post_norm:
        x = _norm(x, layer["attn_norm"], config)
    transformed = _mlp(_input_norm(x, layer.get("mlp_norm"), config), layer, config)
    if config.sandwich_norm:
        transformed = _norm(transformed, layer["mlp_post_norm"], config)
    x = x + transformed
    if config.post_norm:
        x = _norm(x, layer["mlp_norm"], config)
    return x, extra


def embed(
    params: Params, tokens: jax.Array, config: DecoderConfig, positions: jax.Array | None = None
) -> jax.Array:
    """Input embeddings [B, T, D] in float32 (scaled or normed, plus learned positions if any,
    looked up at ``positions`` [B or 1, T], default 0 … T-1)."""
    table = params["embed"]
    x = jnp.take(table, tokens, axis=0)
    if config.embed_scale is not None:
        # HF multiplies by the scale cast to the embedding dtype; do the same for parity.
        x = x * jnp.asarray(config.embed_scale, table.dtype)
    x = x.astype(jnp.float32)
    if config.embed_norm:
        x = _norm(x, params["embed_norm"], config)
    if config.position == "learned":
        if positions is None:
            x = x + params["positions"][: tokens.shape[1]].astype(jnp.float32)[None]
        else:
            x = x + jnp.take(params["positions"], positions, axis=0).astype(jnp.float32)
    return x


def hidden_states(
    params: Params,
    tokens: jax.Array,
    config: DecoderConfig,
    return_layers: bool = False,
    lengths: jax.Array | None = None,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Run the decoder on right-padded ``tokens`` [B, T].

    Returns the final-normed hidden states [B, T, D] (float32) and, when ``return_layers``,
    the residual stream after every layer [L, B, T, D] (not normed) for the logit lens.
    Right padding needs no mask: causal attention keeps real positions from seeing it.

    Packed rows (several texts one after another) pass ``segment_ids`` [B, T] (non-decreasing
    along a row; a token attends only within its segment) and ``positions`` [B, T] (each
    token's position within its text). Without them a row is one sequence at 0 … T-1.

    ``lengths`` is the sequence length transformers sees when it runs a sequence alone (its
    largest position + 1): [B] per row, or [B, T] per token for packed rows. Rope scalings that
    depend on the length (LongRoPE, dynamic NTK) choose frequencies from it. None: T.
    """
    length = tokens.shape[1]
    x = embed(params, tokens, config, positions)
    if config.position == "rope":
        if positions is None:
            positions = jnp.arange(length, dtype=jnp.int32)[None]
        if any(t.length_dependent for t in config.rope_tables):
            if lengths is None:
                lengths = jnp.full((tokens.shape[0],), length, jnp.int32)
            if lengths.ndim == 1:
                lengths = jnp.broadcast_to(lengths[:, None], tokens.shape)
        cos, sin = rope_angles(config, positions, lengths)
        rope_index = jnp.asarray(config.layer_rope, jnp.int32)
    else:
        cos = sin = jnp.zeros((1, 1, length, 0), jnp.float32)
        rope_index = jnp.zeros((config.num_layers,), jnp.int32)
    windows = jnp.asarray(config.windows, jnp.int32)

    def step(carry, scanned):
        layer, table, window = scanned

        def attention(normed, layer):
            out = _self_attention(
                normed, layer, config, cos[table], sin[table], window, segment_ids
            )
            return out, None

        out, _ = block(carry, layer, config, attention)
        return out, (out if return_layers else None)

    x, layers = scan_layers(step, x, params, config, (rope_index, windows))
    return final_norm(params, x, config), layers


def scan_layers(step, carry, params: Params, config: DecoderConfig, per_layer: tuple):
    """``lax.scan`` of ``step(carry, (layer, *per_layer_items))`` over every layer in order:
    the dense_layers stack first (if any), then params["layers"]. ``per_layer`` holds arrays
    with a leading num_layers axis, sliced to each stack; the stacked outputs are joined."""
    stacks = [("layers", config.num_layers - config.dense_layers)]
    if config.dense_layers:
        stacks.insert(0, ("dense_layers", config.dense_layers))
    outputs, start = [], 0
    for name, count in stacks:
        items = tuple(item[start : start + count] for item in per_layer)
        carry, out = jax.lax.scan(step, carry, (params[name], *items))
        outputs.append(out)
        start += count
    if len(outputs) == 1:
        return carry, outputs[0]
    return carry, jax.tree.map(lambda *parts: jnp.concatenate(parts), *outputs)


def final_norm(params: Params, residual: jax.Array, config: DecoderConfig) -> jax.Array:
    """The model's final norm applied to a residual stream [..., D] (float32); the logit lens
    applies it to every layer's residual."""
    if not config.has_final_norm:
        return residual.astype(jnp.float32)
    return _norm(residual, params["final_norm"], config)


def unembedding(params: Params, config: DecoderConfig) -> jax.Array:
    """The [V', D] output projection (the embedding when tied), padding rows included."""
    return params["embed"] if config.tie_embeddings else params["unembed"]


def unembedding_bias(params: Params) -> jax.Array | None:
    """The [V'] output-projection bias (GPT-J, CodeGen, Phi), padding rows included; None when
    the model has none."""
    return params.get("unembed_bias")
