"""LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM: one weight
map, four configs.

They differ only in config: Mistral adds a sliding window on every layer, Qwen2 adds q/k/v
biases (read from the checkpoint) and optional per-layer sliding windows, Qwen3 is Qwen2's
layout with per-head q/k RMSNorms before rope (and usually no biases).
"""

from __future__ import annotations

from ..errors import UnsupportedModelError
from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .rope import read_rope_parameters, rope_table
from .weights import WeightSource, assemble_params, norm_params, torch_linear

_QWEN = ("Qwen2ForCausalLM", "Qwen3ForCausalLM")
# Architectures whose sliding_window, when set, applies to every layer.
_ALWAYS_SLIDING = ("MistralForCausalLM", "MixtralForCausalLM")
# Architectures with per-head q/k RMSNorms before rope.
_QK_NORM = ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")
# transformers' rope base where a config gives none (10000 for the others).
_DEFAULT_ROPE_THETA = {"MixtralForCausalLM": 1_000_000.0}


def _layer_windows(reader: ConfigReader, layers: int, always_sliding: bool) -> tuple[int, ...]:
    window = reader.take("sliding_window", 0) or 0
    layer_types = reader.take("layer_types", None)
    if reader.architecture in _QWEN:
        use_sliding = reader.take("use_sliding_window", False)
        # transformers drops the window unless use_sliding_window, whatever layer_types says.
        window = window if use_sliding else 0
        first_sliding = reader.take("max_window_layers", layers)
        if layer_types is None:
            layer_types = [
                "sliding_attention" if use_sliding and i >= first_sliding else "full_attention"
                for i in range(layers)
            ]
    if layer_types is None:
        layer_types = ["sliding_attention" if always_sliding else "full_attention"] * layers
    if len(layer_types) != layers:
        raise reader.refuse("layer_types", layer_types, f"needs {layers} entries")
    windows = []
    for kind in layer_types:
        if kind == "full_attention":
            windows.append(0)
        elif kind == "sliding_attention":
            windows.append(int(window))
        else:
            raise reader.refuse("layer_types", kind, "unknown layer type")
    return tuple(windows)


def translate(
    reader: ConfigReader,
    *,
    layer_window: tuple[int, ...] | None = None,
    norm: str = "rms",
    norm_eps: float | None = None,
) -> DecoderConfig:
    """Config translation for the Llama family (Llama, Mistral, Qwen2, Qwen3).

    Other adapters with this attention and layout reuse it: ``layer_window`` replaces the
    window fields' reading (nothing about windows is then taken), ``norm``/``norm_eps`` replace
    the RMSNorm read from ``rms_norm_eps``.
    """
    hidden = reader.take("hidden_size")
    heads = reader.take("num_attention_heads")
    layers = reader.take("num_hidden_layers")
    head_dim = reader.take("head_dim", hidden // heads)
    max_positions = reader.take("max_position_embeddings")
    rope = read_rope_parameters(reader, _DEFAULT_ROPE_THETA.get(reader.architecture, 10000.0))
    rotary_dim = int(head_dim * rope.pop("partial_rotary_factor", 1.0))
    table, max_positions = rope_table(rope, rotary_dim, max_positions, reader.architecture)
    # Biases are taken from the checkpoint; these flags only say whether to expect them.
    reader.take("attention_bias", False)
    reader.take("mlp_bias", False)
    if layer_window is None:
        always_sliding = reader.architecture in _ALWAYS_SLIDING
        layer_window = _layer_windows(reader, layers, always_sliding=always_sliding)
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers, head_dim=head_dim,
        num_kv_heads=ConfigField("num_key_value_heads", heads), max_positions=max_positions,
        norm=norm, norm_eps=ConfigField("rms_norm_eps") if norm_eps is None else norm_eps,
        activation=ConfigField("hidden_act"), gated_mlp=True,
        position="rope", rotary_dim=rotary_dim, rope_table=table,
        tie_embeddings=ConfigField("tie_word_embeddings", False),
        layer_window=layer_window, qk_norm=reader.architecture in _QK_NORM,
    )


def attention_params(weights: WeightSource, prefix: str, config: DecoderConfig, dtype) -> dict:
    """One Llama-style layer's params but its MLP: the two RMSNorms, q/k/v/o and the q/k norms
    (``prefix`` is ``model.layers.{i}``)."""
    out = {
        "attn_norm": norm_params(weights, f"{prefix}.input_layernorm", False),
        "mlp_norm": norm_params(weights, f"{prefix}.post_attention_layernorm", False),
        **{name: torch_linear(weights, f"{prefix}.self_attn.{name}_proj", dtype) for name in "qkvo"},
    }
    if config.qk_norm:
        out["q_norm"] = norm_params(weights, f"{prefix}.self_attn.q_norm", False)
        out["k_norm"] = norm_params(weights, f"{prefix}.self_attn.k_norm", False)
    return out


def assemble(
    weights: WeightSource,
    config: DecoderConfig,
    dtype,
    layer,
    final_norm: dict | None = None,
    extra: dict | None = None,
) -> Params:
    """The params of a Llama-layout checkpoint from per-layer params ``layer(i)``
    (``model.embed_tokens``, ``model.norm`` unless ``final_norm`` is given, ``lm_head``), plus
    the ``extra`` params (:func:`.weights.assemble_params`)."""
    return assemble_params(
        weights, config, dtype, layer,
        embed="model.embed_tokens.weight",
        final_norm=norm_params(weights, "model.norm", False) if final_norm is None else final_norm,
        # Old checkpoints carry rotary frequencies as tensors.
        ignorable=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
        extra=extra,
    )


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``model.layers.{i}.self_attn.q_proj`` etc. onto the decoder's params."""

    def layer(i: int) -> dict:
        prefix = f"model.layers.{i}"
        mlp = {
            name: torch_linear(weights, f"{prefix}.mlp.{name}_proj", dtype)
            for name in ("gate", "up", "down")
        }
        return {**attention_params(weights, prefix, config, dtype), **mlp}

    return assemble(weights, config, dtype, layer)


__all__ = ["translate", "convert", "attention_params", "assemble", "UnsupportedModelError"]
