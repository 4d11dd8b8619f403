"""OlmoForCausalLM and Olmo2ForCausalLM: the Llama family's attention, rope and gated MLP with
OLMo's own norms.

OLMo (v1) norms with a LayerNorm that has neither weight nor bias (eps 1e-5, not configurable):
the checkpoint has no norm tensors, and the decoder gets unit scales. ``clip_qkv`` clamps q, k and
v after their projections. OLMo 2 has no pre-norms: each sublayer reads the residual stream as it
is and its output is RMS-normed before the residual add (``post_attention_layernorm``,
``post_feedforward_layernorm``), and its q/k RMSNorms span the whole projected width, before the
split into heads.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import llama
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .weights import WeightSource, norm_params, projections

_OLMO = "OlmoForCausalLM"

# transformers' OlmoLayerNorm hard-codes its epsilon.
_OLMO_NORM_EPS = 1e-5


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for OLMo and OLMo 2 (neither has sliding windows: every layer attends
    to the whole causal context, and window fields are refused)."""
    layers = reader.take("num_hidden_layers")
    full_attention = (0,) * layers
    if reader.architecture == _OLMO:
        config = llama.translate(
            reader, layer_window=full_attention, norm="layer", norm_eps=_OLMO_NORM_EPS
        )
        clip = reader.take("clip_qkv", None)
        return dataclasses.replace(config, clip_qkv=None if clip is None else float(clip))
    config = llama.translate(reader, layer_window=full_attention)
    return dataclasses.replace(
        config, pre_norm=False, sandwich_norm=True, qk_norm=True, qk_norm_scope="full"
    )


def _unit_norm(width: int) -> dict:
    return {"scale": np.ones(width, np.float32)}


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``model.layers.{i}.self_attn.q_proj`` etc. (and OLMo 2's norms) onto the decoder's
    params."""
    olmo2 = not config.pre_norm

    def layer(i: int) -> dict:
        prefix = f"model.layers.{i}"
        out = projections(weights, prefix, dtype)
        if not olmo2:
            out["attn_norm"] = out["mlp_norm"] = _unit_norm(config.hidden_size)
            return out
        out["attn_post_norm"] = norm_params(weights, f"{prefix}.post_attention_layernorm", False)
        out["mlp_post_norm"] = norm_params(weights, f"{prefix}.post_feedforward_layernorm", False)
        out["q_norm"] = norm_params(weights, f"{prefix}.self_attn.q_norm", False)
        out["k_norm"] = norm_params(weights, f"{prefix}.self_attn.k_norm", False)
        return out

    final_norm = None if olmo2 else _unit_norm(config.hidden_size)
    return llama.assemble(weights, config, dtype, layer, final_norm=final_norm)


__all__ = ["translate", "convert"]
