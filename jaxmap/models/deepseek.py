"""DeepseekV2ForCausalLM and DeepseekV3ForCausalLM (DeepSeek-V2, V2-Lite, V3): multi-head latent
attention and a mixture of experts with shared experts, after a few dense layers.

Attention is the decoder's latent attention (:class:`~jaxmap.models.decoder.DecoderConfig`'s
``kv_lora_rank``): queries straight from ``q_proj`` (``q_lora_rank`` null, V2-Lite) or through
``q_a_proj`` → ``q_a_layernorm`` → ``q_b_proj``; ``kv_a_proj_with_mqa`` gives the key/value
latent and the rope key shared by all heads, ``kv_b_proj`` each head's rope-free key and value.
transformers rotates the rope features in adjacent pairs (V2 always, V3 with
``rope_interleave``).

The first ``first_k_dense_replace`` layers have a dense MLP; the others route each token to
``num_experts_per_tok`` of ``n_routed_experts`` experts and add ``n_shared_experts`` shared ones
(one ungated MLP ``n_shared_experts * moe_intermediate_size`` wide). V2 routes by softmax,
``greedy`` or ``group_limited_greedy``; V3 by sigmoid, ``noaux_tc`` (group-limited, by the two
best experts of each group, with ``e_score_correction_bias`` for the choice alone). Both scale
the kept weights by ``routed_scaling_factor``.
"""

from __future__ import annotations

import dataclasses

from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .moe import router_kernel, stacked_experts
from .rope import read_rope_parameters, rope_table, yarn_softmax_scale
from .weights import WeightSource, assemble_params, norm_params, torch_linear

_V3 = "DeepseekV3ForCausalLM"

# Neutral: the router's auxiliary losses change a training step's loss, never the logits
# (aux_loss_alpha and seq_aux are the remote-code configs' spellings), and ep_size is how
# the remote code split experts over devices.
_TRAINING_ONLY = ("output_router_logits", "router_aux_loss_coef", "aux_loss_alpha", "seq_aux", "ep_size")

# Latent attention's modules under self_attn, per decoder param (the norms end in _norm).
_QUERIES = {"q": "q_proj"}
_LOW_RANK_QUERIES = {"q_a": "q_a_proj", "q_a_norm": "q_a_layernorm", "q_b": "q_b_proj"}
_KEYS_VALUES = {"kv_a": "kv_a_proj_with_mqa", "kv_a_norm": "kv_a_layernorm", "kv_b": "kv_b_proj", "o": "o_proj"}


def _attention(reader: ConfigReader, heads: int) -> dict:
    """Latent attention's DecoderConfig fields."""
    kv_heads = reader.take("num_key_value_heads", heads)
    if kv_heads != heads:
        # transformers expands keys to every head, then repeats them again by this ratio.
        raise reader.refuse("num_key_value_heads", kv_heads, f"latent attention needs {heads}, one per head")
    nope, rope = reader.take("qk_nope_head_dim"), reader.take("qk_rope_head_dim")
    values = reader.take("v_head_dim")
    reader.take_copy("qk_head_dim", "qk_nope_head_dim", nope + rope)
    # transformers overwrites head_dim with qk_rope_head_dim whatever the config says.
    reader.take("head_dim", None)
    if values > nope + rope:
        raise reader.refuse("v_head_dim", values, f"values wider than the {nope + rope} query/key features")
    interleaved = True
    if reader.architecture == _V3:
        interleaved = bool(reader.take("rope_interleave", True))
    return dict(
        num_kv_heads=heads, head_dim=nope + rope, rotary_dim=rope, v_head_dim=values,
        kv_lora_rank=reader.take("kv_lora_rank"), q_lora_rank=reader.take("q_lora_rank", 0) or 0,
        rope_interleaved=interleaved,
    )


def _routing(reader: ConfigReader) -> dict:
    """The routed experts' DecoderConfig fields (V2's softmax routing, V3's sigmoid one)."""
    experts = reader.take_first(("n_routed_experts", "num_local_experts", "num_experts"))
    per_token = reader.take("num_experts_per_tok")
    if per_token > experts:
        raise reader.refuse("num_experts_per_tok", per_token, f"more than the {experts} experts")
    groups, kept = reader.take("n_group", 0) or 0, reader.take("topk_group", 0) or 0
    if reader.architecture == _V3:
        reader.expect("topk_method", ["noaux_tc"], "noaux_tc")
        reader.expect("scoring_func", ["sigmoid"], "sigmoid")
        normalize = bool(reader.take("norm_topk_prob", True))
        method = "noaux_tc"
    else:
        method = reader.expect("topk_method", ["greedy", "group_limited_greedy"], "greedy")
        reader.expect("scoring_func", ["softmax"], "softmax")
        # transformers' V2 router never renormalises; the remote code it was ported from did.
        normalize = reader.expect("norm_topk_prob", [False], False)
    fields = dict(
        num_experts=experts, experts_per_token=per_token, normalize_expert_weights=normalize,
        routed_scale=float(reader.take("routed_scaling_factor", 1.0)),
        router_scoring="sigmoid" if method == "noaux_tc" else "softmax",
        router_choice_bias=method == "noaux_tc",
    )
    if method == "greedy":
        return fields
    if groups < 1 or experts % groups:
        raise reader.refuse("n_group", groups, f"{method} needs groups that divide the {experts} experts")
    size = experts // groups
    if method == "noaux_tc" and size < 2:
        raise reader.refuse("n_group", groups, "noaux_tc scores each group by its two best experts")
    if not 0 < kept <= groups or per_token > kept * size:
        raise reader.refuse(
            "topk_group", kept, f"needs 1 to {groups} groups holding {per_token} experts per token"
        )
    return {
        **fields, "expert_groups": groups, "groups_per_token": kept,
        "group_score": "top2_sum" if method == "noaux_tc" else "max",
    }


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for DeepSeek-V2 and V3."""
    for name in _TRAINING_ONLY:
        reader.take(name, None)
    # Multi-token prediction layers (V3) sit after the last layer; transformers never runs them.
    reader.take_first(("num_nextn_predict_layers", "num_mtp_layers"), 0)
    hidden = reader.take("hidden_size")
    heads = reader.take("num_attention_heads")
    layers = reader.take("num_hidden_layers")
    attention = _attention(reader, heads)
    rope = read_rope_parameters(reader)
    factor = rope.pop("partial_rotary_factor", 1.0)
    if factor != 1.0:
        raise reader.refuse("partial_rotary_factor", factor, "the rope part is qk_rope_head_dim")
    table, max_positions = rope_table(
        rope, attention["rotary_dim"], reader.take("max_position_embeddings"), reader.architecture
    )
    # Biases are taken from the checkpoint (q_a, kv_a and o carry them); the flag says whether.
    reader.take("attention_bias", False)
    reader.expect("mlp_bias", [False], False)
    reader.expect("moe_layer_freq", [1], 1)
    dense = reader.take("first_k_dense_replace", 0) or 0
    if dense >= layers:
        raise reader.refuse("first_k_dense_replace", dense, f"no expert layer left of {layers}")
    shared = reader.take("n_shared_experts")
    if shared < 1:
        raise reader.refuse("n_shared_experts", shared, "jaxmap implements one shared expert MLP or more")
    expert_width = reader.take("moe_intermediate_size")
    config = decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers, max_positions=max_positions,
        norm="rms", norm_eps=ConfigField("rms_norm_eps"), activation=ConfigField("hidden_act"),
        gated_mlp=True, position="rope", rope_table=table,
        tie_embeddings=ConfigField("tie_word_embeddings", False),
        intermediate_size=shared * expert_width,
        attn_scale=yarn_softmax_scale(rope, attention["head_dim"] ** -0.5),
        **attention,
    )
    return dataclasses.replace(
        config, expert_intermediate_size=expert_width, shared_expert=True,
        shared_expert_gated=False, dense_layers=dense,
        dense_intermediate_size=reader.take("intermediate_size"), **_routing(reader),
    )


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``model.layers.{i}.self_attn.*`` and ``mlp.*`` (a dense MLP, or ``gate``, ``experts``
    and ``shared_experts``) onto the decoder's params."""

    def layer(i: int) -> dict:
        prefix = f"model.layers.{i}"
        out = {
            "attn_norm": norm_params(weights, f"{prefix}.input_layernorm", False),
            "mlp_norm": norm_params(weights, f"{prefix}.post_attention_layernorm", False),
        }
        queries = _LOW_RANK_QUERIES if config.q_lora_rank else _QUERIES
        for name, module in {**queries, **_KEYS_VALUES}.items():
            source = f"{prefix}.self_attn.{module}"
            if name.endswith("_norm"):
                out[name] = norm_params(weights, source, False)
            else:
                out[name] = torch_linear(weights, source, dtype)
        mlp = f"{prefix}.mlp"
        if i >= config.dense_layers:
            out["router"] = {"kernel": router_kernel(weights, f"{mlp}.gate.weight", config)}
            if config.router_choice_bias:
                out["router"]["choice_bias"] = weights(f"{mlp}.gate.e_score_correction_bias")
            out["experts"] = stacked_experts(weights, mlp, config, dtype)
            mlp = f"{mlp}.shared_experts"
        for part in ("gate", "up", "down"):
            out[part] = torch_linear(weights, f"{mlp}.{part}_proj", dtype)
        return out

    return assemble_params(
        weights, config, dtype, layer, embed="model.embed_tokens.weight",
        final_norm=norm_params(weights, "model.norm", False),
        # V3's multi-token prediction layers (V3 alone routes with a choice bias) follow the
        # last layer; transformers skips them too.
        ignorable=(rf"model\.layers\.{_at_least(config.num_layers)}\..*",) if config.router_choice_bias else (),
    )


def _at_least(number: int) -> str:
    """A regular expression matching the decimal numbers from ``number`` up."""
    digits = len(str(number))
    same_length = "|".join(str(n) for n in range(number, 10**digits))
    return rf"(?:{same_length}|[1-9]\d{{{digits},}})"


__all__ = ["translate", "convert"]
