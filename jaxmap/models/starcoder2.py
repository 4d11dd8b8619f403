"""Starcoder2ForCausalLM: a Llama-like rope/GQA decoder with LayerNorm (with bias), biases on
every projection (use_bias), a non-gated MLP (c_fc, c_proj) and an optional sliding window on
every layer."""

from __future__ import annotations

from . import llama
from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .rope import read_rope_parameters, rope_table
from .weights import WeightSource, norm_params, torch_linear, torch_linears


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for Starcoder2."""
    hidden = reader.take("hidden_size")
    heads = reader.take("num_attention_heads")
    layers = reader.take("num_hidden_layers")
    head_dim = reader.take("head_dim", hidden // heads)
    rope = read_rope_parameters(reader)
    # Starcoder2's default rope rotates the whole head; it never reads partial_rotary_factor.
    partial = rope.pop("partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise reader.refuse("partial_rotary_factor", partial, "Starcoder2 rotates whole heads")
    table, max_positions = rope_table(
        rope, head_dim, reader.take("max_position_embeddings"), reader.architecture
    )
    # Biases are read from the checkpoint; use_bias only says whether to expect them.
    reader.take("use_bias", True)
    for training_only in ("residual_dropout", "embedding_dropout"):
        reader.take(training_only, None)
    window = reader.take("sliding_window", 0) or 0
    # Pre-release fields the released checkpoints still carry; transformers reads norm_epsilon
    # and always builds a LayerNorm and the c_fc/c_proj MLP, so only those values are accepted.
    reader.expect("norm_type", ["layer_norm"], "layer_norm")
    reader.expect("mlp_type", ["default"], "default")
    reader.take("layer_norm_epsilon", None)
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers, head_dim=head_dim,
        num_kv_heads=ConfigField("num_key_value_heads", heads), max_positions=max_positions,
        norm="layer", norm_eps=ConfigField("norm_epsilon", 1e-5),
        activation=ConfigField("hidden_act"), gated_mlp=False,
        position="rope", rotary_dim=head_dim, rope_table=table,
        tie_embeddings=ConfigField("tie_word_embeddings", True),
        layer_window=(int(window),) * layers,
    )


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``model.layers.{i}.self_attn.q_proj``, ``mlp.c_fc`` etc. onto the decoder's params."""

    def layer(i: int) -> dict:
        prefix = f"model.layers.{i}"
        return {
            "attn_norm": norm_params(weights, f"{prefix}.input_layernorm", True),
            "mlp_norm": norm_params(weights, f"{prefix}.post_attention_layernorm", True),
            **torch_linears(weights, dtype, up=f"{prefix}.mlp.c_fc", down=f"{prefix}.mlp.c_proj"),
            **{name: torch_linear(weights, f"{prefix}.self_attn.{name}_proj", dtype) for name in "qkvo"},
        }

    return llama.assemble(
        weights, config, dtype, layer, final_norm=norm_params(weights, "model.norm", True)
    )
