"""PhiForCausalLM and Phi3ForCausalLM.

Phi (1, 1.5, 2): partial rotary, q/k/v/dense with biases, attention and MLP in parallel off one
LayerNorm (the MLP's norm is a copy of it), a plain gelu MLP, an output-projection bias, and
optional per-head q/k LayerNorms shared by all heads.

Phi-3: Llama's maths (RMSNorm, gated MLP, sequential residual) with a fused ``qkv_proj`` and a
fused ``gate_up_proj``, optional partial rotary and an optional sliding window on every layer.
"""

from __future__ import annotations

from . import llama
from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .rope import read_rope_parameters, rope_table
from .weights import WeightSource, norm_params, torch_linear

_PHI3 = "Phi3ForCausalLM"


def _rope(reader: ConfigReader, head_dim: int, max_positions: int, default_partial: float):
    rope = read_rope_parameters(reader)
    # transformers v4 configs keep the rotary fraction beside rope_theta.
    rope.setdefault("partial_rotary_factor", reader.take("partial_rotary_factor", default_partial))
    if reader.architecture == _PHI3:
        kind = rope.get("rope_type", rope.get("type"))
        if kind in ("su", "yarn"):
            # transformers reads Phi-3's old names for LongRoPE as longrope.
            rope.pop("type", None)
            rope["rope_type"] = "longrope"
        # Phi-3 keeps the pretraining context at the top level (Phi3Config's default 4096 when
        # absent); for these rope types transformers gives it priority over the rope dict's.
        original = reader.take("original_max_position_embeddings", 4096)
        if rope.get("rope_type", rope.get("type")) in ("llama3", "yarn", "longrope"):
            rope["original_max_position_embeddings"] = original
    rotary_dim = int(head_dim * rope.pop("partial_rotary_factor"))
    table, max_positions = rope_table(rope, rotary_dim, max_positions, reader.architecture)
    return rotary_dim, table, max_positions


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for Phi and Phi-3."""
    phi3 = reader.architecture == _PHI3
    hidden = reader.take("hidden_size")
    heads = reader.take("num_attention_heads")
    layers = reader.take("num_hidden_layers")
    head_dim = reader.take("head_dim", hidden // heads)
    rotary_dim, table, max_positions = _rope(
        reader, head_dim, reader.take("max_position_embeddings"), 1.0 if phi3 else 0.5
    )
    if phi3:
        # Phi-4-mini's config spells out that there are no biases (transformers reads none).
        for name in ("attention_bias", "mlp_bias", "lm_head_bias"):
            reader.expect(name, [False], False)
        window = reader.take("sliding_window", 0) or 0
        norm, eps, qk_norm = "rms", reader.take("rms_norm_eps"), False
    else:
        window = 0
        norm, eps = "layer", reader.take("layer_norm_eps", 1e-5)
        qk_norm = reader.take("qk_layernorm", False)
        if qk_norm and head_dim != hidden // heads:
            # transformers sizes the q/k LayerNorms hidden_size // heads whatever head_dim says.
            raise reader.refuse("head_dim", head_dim, "with qk_layernorm it must be hidden_size // heads")
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers, head_dim=head_dim,
        num_kv_heads=ConfigField("num_key_value_heads", heads), max_positions=max_positions,
        norm=norm, norm_eps=eps, activation=ConfigField("hidden_act"), gated_mlp=phi3,
        position="rope", rotary_dim=rotary_dim, rope_table=table,
        tie_embeddings=ConfigField("tie_word_embeddings", False),
        layer_window=(window,) * layers if window else (),
        parallel_residual=not phi3,
        qk_norm=qk_norm,
    )


def _phi_layer(weights: WeightSource, i: int, config: DecoderConfig, dtype) -> dict:
    prefix = f"model.layers.{i}"
    attention = f"{prefix}.self_attn"
    norm = norm_params(weights, f"{prefix}.input_layernorm", True)
    out = {
        "attn_norm": norm,
        # Parallel attention and MLP read the same input_layernorm.
        "mlp_norm": norm,
        **{part: torch_linear(weights, f"{attention}.{part}_proj", dtype) for part in "qkv"},
        "o": torch_linear(weights, f"{attention}.dense", dtype),
        "up": torch_linear(weights, f"{prefix}.mlp.fc1", dtype),
        "down": torch_linear(weights, f"{prefix}.mlp.fc2", dtype),
    }
    if config.qk_norm:
        out["q_norm"] = norm_params(weights, f"{attention}.q_layernorm", True)
        out["k_norm"] = norm_params(weights, f"{attention}.k_layernorm", True)
    return out


def _phi3_layer(weights: WeightSource, i: int, config: DecoderConfig, dtype) -> dict:
    prefix = f"model.layers.{i}"
    # qkv_proj rows: all q heads, then all k heads, then all v heads.
    qkv = torch_linear(weights, f"{prefix}.self_attn.qkv_proj", dtype)["kernel"]
    q_width = config.num_heads * config.head_dim
    kv_width = config.num_kv_heads * config.head_dim
    # gate_up_proj rows: the gate, then the up projection.
    gate_up = torch_linear(weights, f"{prefix}.mlp.gate_up_proj", dtype)["kernel"]
    return {
        "attn_norm": norm_params(weights, f"{prefix}.input_layernorm", False),
        "mlp_norm": norm_params(weights, f"{prefix}.post_attention_layernorm", False),
        "q": {"kernel": qkv[:, :q_width]},
        "k": {"kernel": qkv[:, q_width : q_width + kv_width]},
        "v": {"kernel": qkv[:, q_width + kv_width :]},
        "o": torch_linear(weights, f"{prefix}.self_attn.o_proj", dtype),
        "gate": {"kernel": gate_up[:, : config.intermediate_size]},
        "up": {"kernel": gate_up[:, config.intermediate_size :]},
        "down": torch_linear(weights, f"{prefix}.mlp.down_proj", dtype),
    }


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``model.layers.{i}.self_attn.q_proj`` / ``.dense`` / ``.mlp.fc1`` (Phi) or
    ``.self_attn.qkv_proj`` / ``.mlp.gate_up_proj`` (Phi-3) onto the decoder's params."""
    phi3 = config.gated_mlp  # only Phi-3's translation asks for a gated MLP
    layer_params = _phi3_layer if phi3 else _phi_layer
    extra = {} if phi3 else {"unembed_bias": weights("lm_head.bias")}
    return llama.assemble(
        weights, config, dtype, lambda i: layer_params(weights, i, config, dtype),
        # Phi-3's final norm is Llama's model.norm.
        final_norm=None if phi3 else norm_params(weights, "model.final_layernorm", True),
        extra=extra,
    )
