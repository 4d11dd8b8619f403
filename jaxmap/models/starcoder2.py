"""Starcoder2ForCausalLM: a Llama-like rope/GQA decoder with LayerNorm (with bias), biases on
every projection (use_bias), a non-gated MLP (c_fc, c_proj) and an optional sliding window on
every layer."""

from __future__ import annotations

from .adapter import (
    ConfigReader,
    WeightSource,
    activation,
    assemble_params,
    norm_params,
    read_rope_parameters,
    rope_table,
    torch_linear,
)
from .decoder import DecoderConfig, Params


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
    return DecoderConfig(
        vocab_size=reader.take("vocab_size"),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=reader.take("num_key_value_heads", heads),
        head_dim=head_dim,
        intermediate_size=reader.take("intermediate_size"),
        max_positions=max_positions,
        norm="layer",
        norm_eps=reader.take("norm_epsilon", 1e-5),
        activation=activation(reader, "hidden_act"),
        gated_mlp=False,
        position="rope",
        attn_scale=head_dim**-0.5,
        tie_embeddings=reader.take("tie_word_embeddings", True),
        rotary_dim=head_dim,
        rope_tables=(table,),
        layer_rope=(0,) * layers,
        layer_window=(int(window),) * layers,
    )


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``model.layers.{i}.self_attn.q_proj``, ``mlp.c_fc`` etc. onto the decoder's params."""

    def layer(i: int) -> dict:
        prefix = f"model.layers.{i}"
        out = {
            "attn_norm": norm_params(weights, f"{prefix}.input_layernorm", True),
            "mlp_norm": norm_params(weights, f"{prefix}.post_attention_layernorm", True),
            "up": torch_linear(weights, f"{prefix}.mlp.c_fc", dtype),
            "down": torch_linear(weights, f"{prefix}.mlp.c_proj", dtype),
        }
        for name in ("q", "k", "v", "o"):
            out[name] = torch_linear(weights, f"{prefix}.self_attn.{name}_proj", dtype)
        return out

    return assemble_params(
        weights, config, dtype, layer,
        embed="model.embed_tokens.weight",
        final_norm=norm_params(weights, "model.norm", True),
        unembed="lm_head.weight",
        # Old checkpoints carry rotary frequencies as tensors.
        ignorable=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
    )
