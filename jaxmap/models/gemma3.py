"""The Gemma family: Gemma (GemmaForCausalLM), Gemma 2 and Gemma 3, as one translation.

All three scale the embedding by sqrt(hidden_size) and use ``(1 + w)`` norm scales (folded in
at load time). Gemma 2 adds sandwich norms, attention and final logit soft-capping,
``query_pre_attn_scalar`` and alternating sliding/global layers; Gemma 3 adds q/k norms and a
rope base per layer type.
"""

from __future__ import annotations

from .adapter import ACTIVATIONS, ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .rope import read_rope_parameters, rope_table
from .weights import WeightSource, assemble_params, norm_params, projections

_LAYER_TYPES = ("sliding_attention", "full_attention")

# Every how many layers a global one comes, when a config predates ``layer_types``.
_DEFAULT_PATTERN = {"Gemma2ForCausalLM": 2, "Gemma3ForCausalLM": 6}


def _rope_by_layer_type(reader: ConfigReader) -> dict[str, dict]:
    if reader.architecture != "Gemma3ForCausalLM":
        params = read_rope_parameters(reader)
        return {kind: params for kind in _LAYER_TYPES}
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


def _layer_types(reader: ConfigReader, layers: int) -> list[str]:
    if reader.architecture == "GemmaForCausalLM":
        return ["full_attention"] * layers
    pattern = _DEFAULT_PATTERN[reader.architecture]
    if reader.architecture == "Gemma3ForCausalLM":
        pattern = reader.take_first(("sliding_window_pattern", "_sliding_window_pattern"), pattern)
    layer_types = reader.take(
        "layer_types",
        ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)],
    )
    if len(layer_types) != layers or not set(layer_types) <= set(_LAYER_TYPES):
        raise reader.refuse("layer_types", layer_types)
    return layer_types


def _gemma1_activation(reader: ConfigReader) -> str:
    # transformers v5 reads hidden_act and treats the legacy "gelu" of the original releases as
    # the tanh approximation; v4 read hidden_activation instead. Both must agree to be scored.
    name = reader.take("hidden_act", "gelu_pytorch_tanh")
    name = "gelu_pytorch_tanh" if name == "gelu" else name
    if name not in ACTIVATIONS:
        raise reader.refuse("hidden_act", name, f"jaxmap implements {sorted(ACTIVATIONS)}")
    other = reader.take("hidden_activation", None)
    if other is not None and ACTIVATIONS.get(other) != ACTIVATIONS[name]:
        raise reader.refuse("hidden_activation", other, f"contradicts hidden_act {name!r}")
    return ACTIVATIONS[name]


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for Gemma, Gemma 2 and Gemma 3 text models."""
    gemma1 = reader.architecture == "GemmaForCausalLM"
    if reader.take("use_bidirectional_attention", False):
        raise reader.refuse("use_bidirectional_attention", True, "not a causal LM")
    layers = reader.take("num_hidden_layers")
    hidden = reader.take("hidden_size")
    heads = reader.take("num_attention_heads")
    head_dim = reader.take("head_dim")
    max_positions = reader.take("max_position_embeddings")
    layer_types = _layer_types(reader, layers)
    rope_by_type = _rope_by_layer_type(reader)
    tables, contexts = [], []
    for kind in _LAYER_TYPES:
        # Each table from the config's own context (dynamic NTK grows its base from it); the
        # model is scored as far as every table reaches.
        table, context = rope_table(
            rope_by_type[kind], head_dim, max_positions, f"{reader.architecture} {kind}"
        )
        tables.append(table)
        contexts.append(context)
    max_positions = min(contexts)
    window = 0 if gemma1 else reader.take("sliding_window")
    # Biases are taken from the checkpoint; the flag only says whether to expect them.
    reader.take("attention_bias", False)
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers, head_dim=head_dim,
        num_kv_heads=ConfigField("num_key_value_heads", heads), max_positions=max_positions,
        norm="rms", norm_eps=ConfigField("rms_norm_eps"),
        activation=(
            _gemma1_activation(reader) if gemma1
            else ConfigField(("hidden_activation", "hidden_act"))
        ),
        gated_mlp=True,
        position="rope",
        attn_scale=(head_dim if gemma1 else reader.take("query_pre_attn_scalar")) ** -0.5,
        tie_embeddings=ConfigField("tie_word_embeddings", True),
        rotary_dim=head_dim,
        rope_tables=tuple(tables),
        layer_rope=tuple(_LAYER_TYPES.index(kind) for kind in layer_types),
        layer_window=tuple(window if kind == "sliding_attention" else 0 for kind in layer_types),
        qk_norm=reader.architecture == "Gemma3ForCausalLM",
        sandwich_norm=not gemma1,
        embed_scale=hidden**0.5,
        final_logit_softcap=None if gemma1 else reader.take("final_logit_softcapping", None),
        attn_logit_softcap=None if gemma1 else reader.take("attn_logit_softcapping", None),
    )


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map Gemma tensor names onto the decoder's params, folding ``1 + w`` into norm scales."""

    def norm(name: str) -> dict:
        return norm_params(weights, name, False, offset=1.0)

    def layer(i: int) -> dict:
        prefix = f"model.layers.{i}"
        out = {"attn_norm": norm(f"{prefix}.input_layernorm")}
        if config.sandwich_norm:
            out["attn_post_norm"] = norm(f"{prefix}.post_attention_layernorm")
            out["mlp_norm"] = norm(f"{prefix}.pre_feedforward_layernorm")
            out["mlp_post_norm"] = norm(f"{prefix}.post_feedforward_layernorm")
        else:
            # Gemma 1 names its pre-MLP norm post_attention_layernorm, as Llama does.
            out["mlp_norm"] = norm(f"{prefix}.post_attention_layernorm")
        if config.qk_norm:
            out["q_norm"] = norm(f"{prefix}.self_attn.q_norm")
            out["k_norm"] = norm(f"{prefix}.self_attn.k_norm")
        return {**out, **projections(weights, prefix, dtype)}

    return assemble_params(
        weights, config, dtype, layer,
        embed="model.embed_tokens.weight",
        final_norm=norm("model.norm"),
    )
