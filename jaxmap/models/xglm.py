"""XGLMForCausalLM: fairseq-style sinusoidal positions (offset 2, padding row zeroed), embeddings
scaled by sqrt(d_model), pre-LayerNorm blocks with biases.

The sinusoidal table has no weights in the checkpoint; it is built on the host exactly as
transformers builds it and handed to the decoder as learned positions.
"""

from __future__ import annotations

import math

import numpy as np

from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .weights import WeightSource, assemble_params, fairseq_projections, norm_params

# Position p reads row p + 2 of the table (fairseq reserved rows for padding).
_POSITION_OFFSET = 2
_LAYER_NORM_EPS = 1e-5  # torch's nn.LayerNorm default; XGLM has no config field for it.


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for XGLM."""
    hidden = reader.take_first(("d_model", "hidden_size"))
    heads = reader.take_first(("attention_heads", "num_attention_heads"))
    layers = reader.take_first(("num_layers", "num_hidden_layers"))
    for training_only in ("dropout", "activation_dropout", "layerdrop", "init_std"):
        reader.take(training_only, None)
    if reader.take("add_cross_attention", False):
        raise reader.refuse("add_cross_attention", True, "jaxmap scores decoder-only models")
    max_positions = reader.take("max_position_embeddings")
    # transformers zeroes the table's row pad_token_id; rows below the offset are never read.
    padding_row = reader.take("pad_token_id", None)
    if padding_row is not None and _POSITION_OFFSET <= padding_row < max_positions + _POSITION_OFFSET:
        raise reader.refuse("pad_token_id", padding_row, "it would zero a used position embedding")
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers,
        intermediate_size=ConfigField("ffn_dim"), max_positions=max_positions,
        norm="layer", norm_eps=_LAYER_NORM_EPS,
        activation=ConfigField("activation_function"), gated_mlp=False,
        position="learned", tie_embeddings=ConfigField("tie_word_embeddings", True),
        embed_scale=math.sqrt(hidden) if reader.take("scale_embedding", True) else None,
    )


def sinusoidal_positions(positions: int, width: int) -> np.ndarray:
    """The embeddings [positions, width] (float32) of positions 0, 1, ... as transformers'
    XGLM table holds them from row 2 on: sines then cosines of
    ``(position + 2) * exp(-i * log(10000) / (width/2 - 1))``, computed in float32 like torch."""
    half = width // 2
    step = math.log(10000) / (half - 1)
    frequencies = np.exp(np.arange(half, dtype=np.float32) * np.float32(-step))
    rows = np.arange(_POSITION_OFFSET, positions + _POSITION_OFFSET, dtype=np.float32)
    angles = rows[:, None] * frequencies[None, :]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if width % 2:
        table = np.concatenate([table, np.zeros((positions, 1), np.float32)], axis=1)
    return table


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``model.layers.{i}.self_attn.q_proj`` etc. onto the decoder's params."""

    def layer(i: int) -> dict:
        prefix = f"model.layers.{i}"
        return {
            "attn_norm": norm_params(weights, f"{prefix}.self_attn_layer_norm", True),
            "mlp_norm": norm_params(weights, f"{prefix}.final_layer_norm", True),
            **fairseq_projections(weights, prefix, dtype),
        }

    table = sinusoidal_positions(config.max_positions, config.hidden_size)
    return assemble_params(
        weights, config, dtype, layer,
        embed="model.embed_tokens.weight",
        final_norm=norm_params(weights, "model.layer_norm", True),
        # Old checkpoints carry the sinusoidal table as a buffer.
        ignorable=(r"model\.embed_positions\.weights",),
        extra={"positions": table.astype(np.dtype(dtype))},
    )
