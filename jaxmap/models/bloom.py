"""BloomForCausalLM: ALiBi, a LayerNorm on the embeddings, fused per-head q/k/v, tied lm_head.

Bloom's config names no context length: ALiBi has no position table to run out of, and
transformers scores texts of any length. jaxmap does the same and never truncates a Bloom text
(``max_positions`` is :data:`NO_CONTEXT_LIMIT`); texts past the length a checkpoint was trained
on (2048 tokens for BigScience's) are then scored by extrapolation, as transformers does.
"""

from __future__ import annotations

import math

import numpy as np

from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .weights import WeightSource, assemble_params, norm_params, split_fused_qkv_per_head, torch_linears

# max_positions of a model whose positions have no limit: no text is ever truncated.
NO_CONTEXT_LIMIT = 2**31 - 1

# Megatron-DeepSpeed settings that the original BigScience configs carry: kernel fusions, where
# the bias is added, and a constant alibi offset (softmax ignores a constant added to every
# score of a query). None changes the numbers beyond rounding; transformers ignores them too.
_MEGATRON_FIELDS = (
    "attention_softmax_in_fp32",
    "bias_dropout_fusion",
    "masked_softmax_fusion",
    "skip_bias_add",
    "skip_bias_add_qkv",
    "offset_alibi",
    "unk_token_id",
)


def alibi_slopes(num_heads: int) -> tuple[float, ...]:
    """Bloom's (and Falcon's) ALiBi slopes, in float32 as transformers computes them.

    The closest power of two c <= num_heads gets slopes 2^(-8i/c), i = 1..c; the remaining heads
    take every other slope of the 2c-head sequence, 2^(-4(2j-1)/c).
    """
    closest = 2 ** math.floor(math.log2(num_heads))

    def powers(base_exponent: float, exponents: np.ndarray) -> np.ndarray:
        # transformers raises a float32 base to integer powers in float32.
        base = np.float64(np.float32(2.0**base_exponent))
        return (base ** exponents.astype(np.float64)).astype(np.float32)

    slopes = powers(-8.0 / closest, np.arange(1, closest + 1))
    if closest != num_heads:
        remaining = min(closest, num_heads - closest)
        extra = powers(-4.0 / closest, np.arange(1, 2 * remaining, 2))
        slopes = np.concatenate([slopes, extra])
    return tuple(float(s) for s in slopes)


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for Bloom."""
    hidden = reader.take_first(("hidden_size", "n_embed"))
    heads = reader.take_first(("n_head", "num_attention_heads"))
    layers = reader.take_first(("n_layer", "num_hidden_layers"))
    if reader.take("apply_residual_connection_post_layernorm", False):
        raise reader.refuse(
            "apply_residual_connection_post_layernorm", True,
            "jaxmap's residual stream is never the normed input",
        )
    # Megatron's tensor-parallel slices of the output projections: the same sums, added in
    # another order.
    reader.take("slow_but_exact", False)
    for name in _MEGATRON_FIELDS:
        reader.take(name, None)
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers,
        intermediate_size=4 * hidden, max_positions=NO_CONTEXT_LIMIT,
        norm="layer", norm_eps=ConfigField("layer_norm_epsilon", 1e-5),
        # Bloom's own gelu is the tanh approximation (its 0.79788456 is sqrt(2/pi) to 8 digits).
        activation="gelu_tanh",
        gated_mlp=False,
        # Bloom scales q.k only (decoder_config's default attn_scale); the alibi bias is added
        # unscaled.
        position="alibi",
        tie_embeddings=ConfigField("tie_word_embeddings", True),
        alibi_slopes=alibi_slopes(heads),
        embed_norm=True,
    )


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``transformer.h.{i}.self_attention.query_key_value`` etc. onto the decoder's params.

    BigScience's own checkpoints were saved without the ``transformer.`` prefix.
    """
    root = "transformer." if "transformer.word_embeddings.weight" in weights else ""

    def layer(i: int) -> dict:
        prefix = f"{root}h.{i}"
        return {
            "attn_norm": norm_params(weights, f"{prefix}.input_layernorm", True),
            "mlp_norm": norm_params(weights, f"{prefix}.post_attention_layernorm", True),
            **split_fused_qkv_per_head(
                weights, f"{prefix}.self_attention.query_key_value", config, dtype
            ),
            **torch_linears(
                weights, dtype, o=f"{prefix}.self_attention.dense",
                up=f"{prefix}.mlp.dense_h_to_4h", down=f"{prefix}.mlp.dense_4h_to_h",
            ),
        }

    return assemble_params(
        weights, config, dtype, layer,
        embed=f"{root}word_embeddings.weight",
        final_norm=norm_params(weights, f"{root}ln_f", True),
        extra={"embed_norm": norm_params(weights, f"{root}word_embeddings_layernorm", True)},
    )
