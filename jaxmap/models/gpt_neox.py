"""GPTNeoXForCausalLM: partial rotary, fused per-head q/k/v, parallel or sequential residual."""

from __future__ import annotations

from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .rope import read_rope_parameters, rope_table
from .weights import WeightSource, assemble_params, norm_params, split_fused_qkv_per_head, torch_linears


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for GPT-NeoX (Pythia and friends)."""
    hidden = reader.take("hidden_size")
    heads = reader.take("num_attention_heads")
    layers = reader.take("num_hidden_layers")
    head_dim = hidden // heads
    max_positions = reader.take("max_position_embeddings")
    if reader.has("rope_parameters"):
        rope = read_rope_parameters(reader)
    else:
        # transformers v4 spelling; 4.57 also saves rope_theta and partial_rotary_factor beside.
        rope = dict(reader.take("rope_scaling", {}))
        rope["rope_theta"] = reader.take_first(("rotary_emb_base", "rope_theta"), 10000.0)
        rope["partial_rotary_factor"] = reader.take_first(("rotary_pct", "partial_rotary_factor"), 0.25)
    rotary_dim = int(head_dim * rope.pop("partial_rotary_factor", 1.0))
    table, max_positions = rope_table(rope, rotary_dim, max_positions, reader.architecture)
    reader.take("attention_bias", True)
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers, max_positions=max_positions,
        norm="layer", norm_eps=ConfigField("layer_norm_eps", 1e-5),
        activation=ConfigField("hidden_act"), gated_mlp=False,
        position="rope", rotary_dim=rotary_dim, rope_table=table,
        tie_embeddings=ConfigField("tie_word_embeddings", False),
        parallel_residual=reader.take("use_parallel_residual", True),
    )


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``gpt_neox.layers.{i}.attention.query_key_value`` etc. onto the decoder's params."""

    def layer(i: int) -> dict:
        prefix = f"gpt_neox.layers.{i}"
        return {
            "attn_norm": norm_params(weights, f"{prefix}.input_layernorm", True),
            "mlp_norm": norm_params(weights, f"{prefix}.post_attention_layernorm", True),
            **split_fused_qkv_per_head(weights, f"{prefix}.attention.query_key_value", config, dtype),
            **torch_linears(
                weights, dtype, o=f"{prefix}.attention.dense",
                up=f"{prefix}.mlp.dense_h_to_4h", down=f"{prefix}.mlp.dense_4h_to_h",
            ),
        }

    return assemble_params(
        weights, config, dtype, layer,
        embed="gpt_neox.embed_in.weight",
        final_norm=norm_params(weights, "gpt_neox.final_layer_norm", True),
        unembed="embed_out.weight",
        # Old checkpoints carry mask buffers and rotary frequencies as tensors.
        ignorable=(r"gpt_neox\.layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",),
    )
