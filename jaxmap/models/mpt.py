"""MptForCausalLM (and MosaicML's own MPTForCausalLM checkpoints): ALiBi, LayerNorms without
bias, fused q/k/v (``Wqkv``: all queries, then all keys, then all values), no linear biases.

MPT's ALiBi slopes depend on ``attn_config.alibi_bias_max``. transformers' MptModel always
builds them with 8, the value every MosaicML release uses; jaxmap follows the config, as
MosaicML's code does (the slopes are checked against transformers' ``build_mpt_alibi_tensor``
given the same maximum). Texts are cut at ``max_seq_len``, beyond which transformers' MPT
cannot run.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UnsupportedModelError
from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .weights import WeightSource, assemble_params, norm_params, torch_linear

# attn_config fields that only matter for settings jaxmap refuses, for training, or for the
# kernel that computes the same attention.
_NEUTRAL_ATTENTION_FIELDS = (
    "attn_pdrop",
    "attn_impl",
    # Restricts attention to tokens of one sequence id, which only training passes.
    "attn_uses_sequence_id",
    # Only read with grouped-query attention (refused).
    "kv_n_heads",
    # Only read with rotary positions (refused).
    "rope_theta",
    "rope_impl",
    "rope_dail_config",
    "rope_hf_config",
)

# Top-level fields for training (initialisation, gradient scaling, dropout), logging, or the
# tokenizer (jaxmap reads the checkpoint's own).
_NEUTRAL_FIELDS = (
    "init_device",
    "init_config",
    "embedding_fraction",
    "emb_pdrop",
    "verbose",
    "tokenizer_name",
    # Only decides what padding tokens compute; scoring never reads a padded position.
    "use_pad_tok_in_ffn",
)


def alibi_slopes(num_heads: int, alibi_bias_max: float = 8) -> tuple[float, ...]:
    """MPT's ALiBi slopes, in float32 as transformers computes them.

    With p the power of two >= num_heads, the p slopes 2^(-alibi_bias_max * i / p), i = 1..p;
    for other head counts the odd-numbered slopes first, then the even ones, cut to num_heads.
    """
    padded = 2 ** math.ceil(math.log2(num_heads))
    exponents = np.arange(1, padded + 1, dtype=np.float32) * np.float32(alibi_bias_max / padded)
    slopes = (np.float32(1.0) / np.power(np.float32(2.0), exponents)).astype(np.float32)
    if padded != num_heads:
        slopes = np.concatenate([slopes[1::2], slopes[::2]])[:num_heads]
    return tuple(float(s) for s in slopes)


def _attention_settings(reader: ConfigReader) -> tuple[float, float | None, float | None]:
    """(alibi_bias_max, softmax_scale, clip_qkv) from ``attn_config``, every other field of it
    implemented as its one supported value or refused by name."""
    attention = ConfigReader(dict(reader.take("attn_config", {})), f"{reader.architecture} attn_config")
    attention.expect("attn_type", ["multihead_attention"], "multihead_attention")
    attention.expect("alibi", [True], True)
    attention.expect("prefix_lm", [False], False)
    attention.expect("qk_ln", [False], False)
    attention.expect("qk_gn", [False], False)
    attention.expect("rope", [False], False)
    attention.expect("fused_qkv", [True], True)
    attention.expect("sliding_window_size", [-1], -1)
    for name in _NEUTRAL_ATTENTION_FIELDS:
        attention.take(name, None)
    settings = (
        attention.take("alibi_bias_max", 8),
        attention.take("softmax_scale", None),
        attention.take("clip_qkv", None),
    )
    attention.finish()
    return settings


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for MPT."""
    hidden = reader.take_first(("d_model", "hidden_size"))
    heads = reader.take_first(("n_heads", "num_attention_heads"))
    layers = reader.take_first(("n_layers", "num_hidden_layers"))
    head_dim = hidden // heads
    alibi_bias_max, softmax_scale, clip_qkv = _attention_settings(reader)
    reader.expect("no_bias", [True], True)
    # transformers' MPT has no logit scaling; MosaicML's multiplies the logits.
    reader.expect("logit_scale", [None], None)
    # MosaicML's low-precision LayerNorm only differs in half precision.
    reader.expect("norm_type", ["low_precision_layernorm", "layernorm"], "low_precision_layernorm")
    reader.expect("fc_type", ["torch"], "torch")
    ffn = ConfigReader(dict(reader.take("ffn_config", {})), f"{reader.architecture} ffn_config")
    ffn.expect("ffn_type", ["mptmlp"], "mptmlp")
    ffn.finish()
    # With ALiBi the position table is never read; a checkpoint that has one is refused as an
    # unused tensor.
    reader.take("learned_pos_emb", True)
    for name in _NEUTRAL_FIELDS:
        reader.take(name, None)
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers,
        intermediate_size=int(reader.take("expansion_ratio", 4) * hidden),
        max_positions=ConfigField("max_seq_len", 2048),
        norm="layer", norm_eps=ConfigField("layer_norm_epsilon", 1e-5),
        activation="gelu", gated_mlp=False,
        # MPT adds the bias after scaling q.k.
        position="alibi", attn_scale=head_dim**-0.5 if softmax_scale is None else softmax_scale,
        tie_embeddings=ConfigField("tie_word_embeddings", True),
        alibi_slopes=alibi_slopes(heads, alibi_bias_max),
        clip_qkv=clip_qkv,
    )


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``transformer.blocks.{i}.attn.Wqkv`` etc. onto the decoder's params."""
    width = config.hidden_size

    def layer(i: int) -> dict:
        prefix = f"transformer.blocks.{i}"
        fused = weights(f"{prefix}.attn.Wqkv.weight", dtype).T
        up = torch_linear(weights, f"{prefix}.ffn.up_proj", dtype, bias=False)
        if up["kernel"].shape[1] != config.intermediate_size:
            raise UnsupportedModelError(
                f"{weights.model}: {prefix}.ffn.up_proj has {up['kernel'].shape[1]} outputs, "
                f"expansion_ratio * d_model is {config.intermediate_size}"
            )
        return {
            "attn_norm": norm_params(weights, f"{prefix}.norm_1", False),
            "mlp_norm": norm_params(weights, f"{prefix}.norm_2", False),
            "q": {"kernel": fused[:, :width]},
            "k": {"kernel": fused[:, width : 2 * width]},
            "v": {"kernel": fused[:, 2 * width :]},
            "o": torch_linear(weights, f"{prefix}.attn.out_proj", dtype, bias=False),
            "up": up,
            "down": torch_linear(weights, f"{prefix}.ffn.down_proj", dtype, bias=False),
        }

    return assemble_params(
        weights, config, dtype, layer,
        embed="transformer.wte.weight",
        final_norm=norm_params(weights, "transformer.norm_f", False),
    )
