"""StableLmForCausalLM: LayerNorms with bias, partial rotary, Llama's gated MLP, optional q/k/v
biases, optional per-head q/k LayerNorms (separate weights for every head) and an optional
parallel residual.

With ``use_parallel_residual`` attention and MLP read the same ``input_layernorm`` (the MLP's
norm is a copy of it). The per-head q/k norms are stacked into a [heads, head_dim] scale, which
the decoder's norm broadcasts over [batch, time, heads, head_dim].
"""

from __future__ import annotations

import numpy as np

from . import llama
from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .rope import read_rope_parameters, rope_table
from .weights import WeightSource, norm_params, projections


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for StableLM (StableLM-2, StableLM-3B-4E1T, StableCode)."""
    hidden = reader.take("hidden_size")
    heads = reader.take("num_attention_heads")
    layers = reader.take("num_hidden_layers")
    head_dim = hidden // heads
    if head_dim * heads != hidden:
        raise reader.refuse("num_attention_heads", heads, f"must divide hidden_size {hidden}")
    rope = read_rope_parameters(reader)
    # transformers v4 configs keep the rotary fraction beside rope_theta.
    rope.setdefault("partial_rotary_factor", reader.take("partial_rotary_factor", 0.25))
    rotary_dim = int(head_dim * rope.pop("partial_rotary_factor"))
    table, max_positions = rope_table(
        rope, rotary_dim, reader.take("max_position_embeddings"), reader.architecture
    )
    # The biases are read from the checkpoint; the flag only says whether to expect them.
    reader.take("use_qkv_bias", False)
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers,
        num_kv_heads=ConfigField("num_key_value_heads", heads), max_positions=max_positions,
        norm="layer", norm_eps=ConfigField("layer_norm_eps", 1e-5),
        activation=ConfigField("hidden_act"), gated_mlp=True,
        position="rope", rotary_dim=rotary_dim, rope_table=table,
        tie_embeddings=ConfigField("tie_word_embeddings", False),
        parallel_residual=reader.take("use_parallel_residual", False),
        qk_norm=reader.take("qk_layernorm", False),
    )


def _per_head_norm(weights: WeightSource, name: str, heads: int) -> dict:
    # One bias-free LayerNorm per head: the scales stacked into [heads, head_dim].
    return {"scale": np.stack([weights(f"{name}.norms.{h}.weight") for h in range(heads)])}


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``model.layers.{i}.self_attn.q_proj`` etc. onto the decoder's params."""

    def layer(i: int) -> dict:
        prefix = f"model.layers.{i}"
        norm = norm_params(weights, f"{prefix}.input_layernorm", True)
        out = {
            "attn_norm": norm,
            "mlp_norm": (
                norm
                if config.parallel_residual
                else norm_params(weights, f"{prefix}.post_attention_layernorm", True)
            ),
            **projections(weights, prefix, dtype),
        }
        if config.qk_norm:
            attention = f"{prefix}.self_attn"
            out["q_norm"] = _per_head_norm(weights, f"{attention}.q_layernorm", config.num_heads)
            out["k_norm"] = _per_head_norm(weights, f"{attention}.k_layernorm", config.num_kv_heads)
        return out

    return llama.assemble(
        weights, config, dtype, layer, final_norm=norm_params(weights, "model.norm", True)
    )
