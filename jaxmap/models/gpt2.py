"""GPT2LMHeadModel: learned positions, LayerNorm with bias, Conv1D weights already [in, out]."""

from __future__ import annotations

from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .weights import WeightSource, assemble_params, norm_params


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for GPT-2."""
    hidden = reader.take_first(("n_embd", "hidden_size"))
    heads = reader.take_first(("n_head", "num_attention_heads"))
    if reader.take("scale_attn_by_inverse_layer_idx", False):
        raise reader.refuse("scale_attn_by_inverse_layer_idx", True)
    # Upcasting only changes rounding in half precision; jaxmap's softmax is float32 anyway.
    reader.take("reorder_and_upcast_attn", False)
    scale_attention = reader.take("scale_attn_weights", True)
    head_dim = hidden // heads
    layers = reader.take_first(("n_layer", "num_hidden_layers"))
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers,
        intermediate_size=ConfigField("n_inner", 4 * hidden),
        max_positions=ConfigField(("n_positions", "max_position_embeddings")),
        norm="layer", norm_eps=ConfigField("layer_norm_epsilon", 1e-5),
        activation=ConfigField("activation_function"), gated_mlp=False,
        position="learned", attn_scale=head_dim**-0.5 if scale_attention else 1.0,
        tie_embeddings=ConfigField("tie_word_embeddings", True),
    )


def _conv1d(weights: WeightSource, name: str, dtype, columns: slice | None = None) -> dict:
    kernel = weights(f"{name}.weight", dtype)
    bias = weights(f"{name}.bias")
    if columns is not None:
        kernel, bias = kernel[:, columns], bias[columns]
    return {"kernel": kernel, "bias": bias}


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``transformer.h.{i}.attn.c_attn`` etc. (prefix optional) onto the decoder's params."""
    root = "transformer." if "transformer.wte.weight" in weights else ""
    width = config.hidden_size

    def layer(i: int) -> dict:
        prefix = f"{root}h.{i}"
        qkv = f"{prefix}.attn.c_attn"
        return {
            "attn_norm": norm_params(weights, f"{prefix}.ln_1", True),
            "mlp_norm": norm_params(weights, f"{prefix}.ln_2", True),
            "q": _conv1d(weights, qkv, dtype, slice(0, width)),
            "k": _conv1d(weights, qkv, dtype, slice(width, 2 * width)),
            "v": _conv1d(weights, qkv, dtype, slice(2 * width, 3 * width)),
            "o": _conv1d(weights, f"{prefix}.attn.c_proj", dtype),
            "up": _conv1d(weights, f"{prefix}.mlp.c_fc", dtype),
            "down": _conv1d(weights, f"{prefix}.mlp.c_proj", dtype),
        }

    return assemble_params(
        weights, config, dtype, layer,
        embed=f"{root}wte.weight",
        final_norm=norm_params(weights, f"{root}ln_f", True),
        # Old checkpoints carry the causal-mask buffers as tensors.
        ignorable=(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias",),
        extra={"positions": weights(f"{root}wpe.weight", dtype)},
    )
