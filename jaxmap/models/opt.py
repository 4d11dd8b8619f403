"""OPTForCausalLM: learned positions stored with an offset of 2, pre- or post-LayerNorm blocks,
and (opt-350m) embeddings narrower than the residual stream, projected in and out.

The projections are folded into the embedding matrices on the host: the input embedding becomes
``E @ P_in^T`` ([V, D]) and the output projection ``W @ P_out`` ([V, D]), where ``W`` is the
language-model head (the token embedding when tied). The folded pair is no longer one matrix, so
the decoder sees untied embeddings.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedModelError
from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .weights import WeightSource, assemble_params, fairseq_projections, norm_params

# OPT's learned position table starts with two rows that no position uses (a fairseq leftover).
_POSITION_OFFSET = 2
_LAYER_NORM_EPS = 1e-5  # torch's nn.LayerNorm default; OPT has no config field for it.


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for OPT."""
    hidden = reader.take("hidden_size")
    heads = reader.take("num_attention_heads")
    layers = reader.take("num_hidden_layers")
    pre_norm = reader.take("do_layer_norm_before", True)
    remove_final_norm = reader.take("_remove_final_layer_norm", False)
    tied = reader.take("tie_word_embeddings", True)
    projected_width = reader.take("word_embed_proj_dim", hidden)
    if projected_width != hidden and not tied:
        # Folding the projections needs to know which matrix the head is; only tied
        # checkpoints (opt-350m) are known to combine the two.
        raise reader.refuse(
            "tie_word_embeddings", tied, f"with word_embed_proj_dim={projected_width} != hidden_size"
        )
    # Biases and norm affines are read from the checkpoint (absent ones are zero / one).
    reader.take("enable_bias", True)
    reader.take("layer_norm_elementwise_affine", True)
    for training_only in ("dropout", "activation_dropout", "layerdrop", "init_std"):
        reader.take(training_only, None)
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers,
        intermediate_size=ConfigField("ffn_dim"),
        max_positions=ConfigField("max_position_embeddings"),
        norm="layer", norm_eps=_LAYER_NORM_EPS,
        activation=ConfigField("activation_function"), gated_mlp=False,
        position="learned", tie_embeddings=tied and projected_width == hidden,
        post_norm=not pre_norm,
        # transformers builds the final norm only for pre-norm models that keep it.
        has_final_norm=pre_norm and not remove_final_norm,
    )


def _layer_norm(weights: WeightSource, name: str, width: int) -> dict:
    """A LayerNorm's params; without elementwise affine it has none, which means scale 1."""
    if f"{name}.weight" not in weights:
        return {"scale": np.ones(width, np.float32)}
    return norm_params(weights, name, with_bias=f"{name}.bias" in weights)


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``model.decoder.layers.{i}.self_attn.q_proj`` etc. (or the older ``decoder.``
    prefix) onto the decoder's params."""
    root = "model.decoder" if "model.decoder.embed_tokens.weight" in weights else "decoder"
    width = config.hidden_size

    def layer(i: int) -> dict:
        prefix = f"{root}.layers.{i}"
        return {
            "attn_norm": _layer_norm(weights, f"{prefix}.self_attn_layer_norm", width),
            "mlp_norm": _layer_norm(weights, f"{prefix}.final_layer_norm", width),
            **fairseq_projections(weights, prefix, dtype),
        }

    # float32, so that projections are folded in before the cast to ``dtype``.
    tokens = embed = weights(f"{root}.embed_tokens.weight")
    unembed: str | np.ndarray = "lm_head.weight"
    ignorable = []
    if tokens.shape[1] != width:
        # word_embed_proj_dim != hidden_size: transformers then builds both projections.
        embed = tokens @ weights(f"{root}.project_in.weight").T
        # Tied (translate refuses the untied combination): the head is the token embedding.
        unembed = tokens @ weights(f"{root}.project_out.weight")
        ignorable.append(r"lm_head\.weight")
    if config.has_final_norm:
        final_norm = _layer_norm(weights, f"{root}.final_layer_norm", width)
    else:
        final_norm = {}
        # _remove_final_layer_norm: transformers ignores the checkpoint's final norm.
        ignorable.append(rf"{root}\.final_layer_norm\.(weight|bias)")
    positions = weights(f"{root}.embed_positions.weight", dtype)
    if positions.shape[0] != config.max_positions + _POSITION_OFFSET:
        raise UnsupportedModelError(
            f"{weights.model}: {root}.embed_positions.weight has {positions.shape[0]} rows, "
            f"max_position_embeddings + 2 = {config.max_positions + _POSITION_OFFSET} expected"
        )
    return assemble_params(
        weights, config, dtype, layer,
        embed=embed,
        final_norm=final_norm,
        unembed=unembed,
        ignorable=ignorable,
        extra={"positions": positions[_POSITION_OFFSET : _POSITION_OFFSET + config.max_positions]},
    )
