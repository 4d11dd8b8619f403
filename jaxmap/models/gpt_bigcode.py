"""GPTBigCodeForCausalLM (SantaCoder, StarCoder 1): GPT-2 with learned positions, nn.Linear
weights and, with multi_query, one key/value head shared by all query heads.

The fused ``c_attn`` output is ``[q (hidden) | k (head_dim) | v (head_dim)]`` with multi_query;
without it, it is grouped per head as ``[q | k | v]`` (GPT-NeoX's layout).
"""

from __future__ import annotations

from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .weights import (
    WeightSource,
    assemble_params,
    norm_params,
    split_fused_qkv_per_head,
    torch_linear,
    torch_linears,
)


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for GPT-BigCode."""
    hidden = reader.take_first(("n_embd", "hidden_size"))
    heads = reader.take_first(("n_head", "num_attention_heads"))
    layers = reader.take_first(("n_layer", "num_hidden_layers"))
    multi_query = reader.take("multi_query", True)
    kv_heads = 1 if multi_query else heads
    # transformers saves the head count it derives from multi_query.
    reader.take_copy("num_key_value_heads", "multi_query", kv_heads)
    if reader.take("add_cross_attention", False):
        raise reader.refuse("add_cross_attention", True, "jaxmap scores decoder-only models")
    # Softmax precision flags: jaxmap's softmax is float32 whatever they say.
    reader.take("attention_softmax_in_fp32", True)
    reader.take("scale_attention_softmax_in_fp32", True)
    # Settings of the pre-release inference runner that early checkpoints saved; transformers'
    # model never reads them.
    for runner_setting in (
        "inference_runner", "max_batch_size", "max_sequence_length", "pad_key_length",
        "pre_allocate_kv_cache", "validate_runner_input", "gradient_checkpointing",
    ):
        reader.take(runner_setting, None)
    head_dim = hidden // heads
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers, num_kv_heads=kv_heads,
        intermediate_size=ConfigField("n_inner", 4 * hidden),
        max_positions=ConfigField(("n_positions", "max_position_embeddings")),
        norm="layer", norm_eps=ConfigField("layer_norm_epsilon", 1e-5),
        activation=ConfigField("activation_function"), gated_mlp=False,
        position="learned",
        attn_scale=head_dim**-0.5 if reader.take("scale_attn_weights", True) else 1.0,
        tie_embeddings=ConfigField("tie_word_embeddings", True),
    )


def _multi_query_qkv(weights: WeightSource, name: str, config: DecoderConfig, dtype) -> dict:
    fused = torch_linear(weights, name, dtype, bias=True)
    kernel, bias = fused["kernel"], fused["bias"]
    edges = (0, config.hidden_size, config.hidden_size + config.head_dim, None)
    return {
        part: {"kernel": kernel[:, start:end], "bias": bias[start:end]}
        for part, start, end in zip("qkv", edges[:-1], edges[1:])
    }


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``transformer.h.{i}.attn.c_attn`` etc. onto the decoder's params."""
    split_qkv = _multi_query_qkv if config.num_kv_heads == 1 else split_fused_qkv_per_head

    def layer(i: int) -> dict:
        prefix = f"transformer.h.{i}"
        return {
            "attn_norm": norm_params(weights, f"{prefix}.ln_1", True),
            "mlp_norm": norm_params(weights, f"{prefix}.ln_2", True),
            **split_qkv(weights, f"{prefix}.attn.c_attn", config, dtype),
            **torch_linears(
                weights, dtype, bias=True, o=f"{prefix}.attn.c_proj",
                up=f"{prefix}.mlp.c_fc", down=f"{prefix}.mlp.c_proj",
            ),
        }

    return assemble_params(
        weights, config, dtype, layer,
        embed="transformer.wte.weight",
        final_norm=norm_params(weights, "transformer.ln_f", True),
        # Old checkpoints carry the causal-mask buffers as tensors.
        ignorable=(r"transformer\.h\.\d+\.attn\.(masked_)?bias", r"transformer\.bias"),
        extra={"positions": weights("transformer.wpe.weight", dtype)},
    )
