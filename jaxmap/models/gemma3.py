"""Gemma3ForCausalLM: interleaved sliding/global layers with their own rope bases, q/k norms,
sandwich norms, a scaled embedding and ``(1 + w)`` norm scales (folded in at load time)."""

from __future__ import annotations

from .adapter import ConfigReader, WeightSource, assemble_params, norm_params, projections, rope_table
from .decoder import DecoderConfig, Params
from .llama import activation

_LAYER_TYPES = ("sliding_attention", "full_attention")


def _rope_by_layer_type(reader: ConfigReader) -> dict[str, dict]:
    if reader.has("rope_parameters"):
        params = reader.take("rope_parameters")
        if set(params) != set(_LAYER_TYPES):
            raise reader.refuse("rope_parameters", params, f"expected keys {_LAYER_TYPES}")
        return {kind: dict(params[kind]) for kind in _LAYER_TYPES}
    # transformers v4 spelling: rope_scaling applies to the global layers only.
    full = dict(reader.take("rope_scaling", {}))
    full["rope_theta"] = reader.take("rope_theta", 1_000_000.0)
    local = {"rope_type": "default", "rope_theta": reader.take("rope_local_base_freq", 10_000.0)}
    return {"sliding_attention": local, "full_attention": full}


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for Gemma 3 text models."""
    if reader.take("use_bidirectional_attention", False):
        raise reader.refuse("use_bidirectional_attention", True, "not a causal LM")
    layers = reader.take("num_hidden_layers")
    hidden = reader.take("hidden_size")
    head_dim = reader.take("head_dim")
    max_positions = reader.take("max_position_embeddings")
    pattern = reader.take_first(("sliding_window_pattern", "_sliding_window_pattern"), 6)
    layer_types = reader.take(
        "layer_types",
        ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)],
    )
    if len(layer_types) != layers or not set(layer_types) <= set(_LAYER_TYPES):
        raise reader.refuse("layer_types", layer_types)
    rope_by_type = _rope_by_layer_type(reader)
    tables = []
    for kind in _LAYER_TYPES:
        table, max_positions = rope_table(
            rope_by_type[kind], head_dim, max_positions, f"{reader.architecture} {kind}"
        )
        tables.append(table)
    window = reader.take("sliding_window")
    reader.take("attention_bias", False)
    return DecoderConfig(
        vocab_size=reader.take("vocab_size"),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=reader.take("num_attention_heads"),
        num_kv_heads=reader.take("num_key_value_heads"),
        head_dim=head_dim,
        intermediate_size=reader.take("intermediate_size"),
        max_positions=max_positions,
        norm="rms",
        norm_eps=reader.take("rms_norm_eps"),
        activation=activation(reader, "hidden_activation", "hidden_act"),
        gated_mlp=True,
        position="rope",
        attn_scale=reader.take("query_pre_attn_scalar") ** -0.5,
        tie_embeddings=reader.take("tie_word_embeddings", True),
        rotary_dim=head_dim,
        rope_tables=tuple(tables),
        layer_rope=tuple(_LAYER_TYPES.index(kind) for kind in layer_types),
        layer_window=tuple(window if kind == "sliding_attention" else 0 for kind in layer_types),
        qk_norm=True,
        sandwich_norm=True,
        embed_scale=hidden**0.5,
        final_logit_softcap=reader.take("final_logit_softcapping", None),
        attn_logit_softcap=reader.take("attn_logit_softcapping", None),
    )


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map Gemma 3 tensor names onto the decoder's params, folding ``1 + w`` into norm scales."""

    def norm(name: str) -> dict:
        return norm_params(weights, name, False, offset=1.0)

    def layer(i: int) -> dict:
        prefix = f"model.layers.{i}"
        return {
            "attn_norm": norm(f"{prefix}.input_layernorm"),
            "attn_post_norm": norm(f"{prefix}.post_attention_layernorm"),
            "mlp_norm": norm(f"{prefix}.pre_feedforward_layernorm"),
            "mlp_post_norm": norm(f"{prefix}.post_feedforward_layernorm"),
            "q_norm": norm(f"{prefix}.self_attn.q_norm"),
            "k_norm": norm(f"{prefix}.self_attn.k_norm"),
            **projections(weights, prefix, dtype),
        }

    return assemble_params(
        weights, config, dtype, layer,
        embed="model.embed_tokens.weight",
        final_norm=norm("model.norm"),
        unembed="lm_head.weight",
    )
