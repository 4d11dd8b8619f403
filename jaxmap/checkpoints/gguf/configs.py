"""Config translation: one builder per GGUF architecture, writing every field the transformers
config class writes (besides ``architectures`` and ``model_type``, which come from the
architecture's entry in :data:`jaxmap.checkpoints.gguf.convert.CONVERTERS`)."""

from __future__ import annotations

from typing import Any

from .reader import GGUFSource, float32_value


def _token_ids(source: GGUFSource) -> dict[str, int | None]:
    return {
        f"{name}_token_id": source.metadata.get(f"tokenizer.ggml.{key}_token_id")
        for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))
    }


def _vocab_size(source: GGUFSource) -> int:
    tokens = source.metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        return int(source.arch_value("vocab_size"))
    return int(source.arch_value("vocab_size", len(tokens)))


def _attention_shape(source: GGUFSource) -> dict[str, int]:
    hidden = int(source.arch_value("embedding_length"))
    heads = int(source.arch_value("attention.head_count"))
    kv_heads = source.arch_value("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):
        raise source.fail("attention.head_count_kv differs per layer; that is not supported")
    head_dim = int(source.arch_value("attention.key_length", hidden // heads))
    value_dim = int(source.arch_value("attention.value_length", head_dim))
    if value_dim != head_dim:
        raise source.fail(f"attention.value_length {value_dim} differs from key_length {head_dim}")
    return {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": head_dim,
    }


def _rope_parameters(source: GGUFSource, theta: float) -> dict[str, Any]:
    """``rope_parameters`` for the global RoPE, refusing scalings that are not translated."""
    scaling = source.arch_value("rope.scaling.type", "none")
    parameters: dict[str, Any] = {"rope_theta": theta, "rope_type": "default"}
    if scaling == "linear":
        parameters = {
            "rope_theta": theta,
            "rope_type": "linear",
            "factor": float32_value(source.arch_value("rope.scaling.factor")),
        }
    elif scaling != "none":
        raise source.fail(f"rope.scaling.type {scaling!r} is not supported (only none and linear)")
    return parameters


def _common_config(source: GGUFSource) -> dict[str, Any]:
    shape = _attention_shape(source)
    rotary = int(source.arch_value("rope.dimension_count", shape["head_dim"]))
    if rotary != shape["head_dim"]:
        raise source.fail(
            f"rope.dimension_count {rotary} differs from the head dimension {shape['head_dim']}; "
            "partial rotary embeddings are not supported"
        )
    return {
        **shape,
        "attention_dropout": 0.0,
        **_token_ids(source),
        "dtype": "float32",  # of model.safetensors, as save_pretrained records it
        "initializer_range": 0.02,
        "intermediate_size": int(source.arch_value("feed_forward_length")),
        "max_position_embeddings": int(source.arch_value("context_length")),
        "num_hidden_layers": int(source.arch_value("block_count")),
        "rms_norm_eps": float32_value(source.arch_value("attention.layer_norm_rms_epsilon")),
        "rope_parameters": _rope_parameters(
            source, float32_value(source.arch_value("rope.freq_base", 10000.0))
        ),
        # llama.cpp writes the output projection only when it is not the embedding matrix.
        "tie_word_embeddings": "output.weight" not in source.tensors,
        "use_cache": True,
        "vocab_size": _vocab_size(source),
    }


def llama_config(source: GGUFSource) -> dict[str, Any]:
    """LlamaForCausalLM's config from a ``llama`` GGUF file."""
    if "rope_freqs.weight" in source.tensors:
        raise source.fail(
            "tensor rope_freqs.weight (Llama 3.1-style RoPE frequency factors) is not supported"
        )
    return {
        **_common_config(source),
        "attention_bias": "blk.0.attn_q.bias" in source.tensors,
        "hidden_act": "silu",
        "mlp_bias": "blk.0.ffn_up.bias" in source.tensors,
        "pretraining_tp": 1,
    }


def qwen2_config(source: GGUFSource) -> dict[str, Any]:
    """Qwen2ForCausalLM's config from a ``qwen2`` GGUF file."""
    config = _common_config(source)
    return {
        **config,
        "hidden_act": "silu",
        "layer_types": ["full_attention"] * config["num_hidden_layers"],
        # GGUF has no sliding-window fields for Qwen2 (llama.cpp never uses one); these are the
        # transformers defaults, inert while use_sliding_window is false.
        "max_window_layers": 28,
        "sliding_window": None,
        "use_sliding_window": False,
    }


# llama.cpp hard-codes these for every Gemma 3 file that does not state them.
_GEMMA3_SLIDING_PERIOD = 6  # every 6th layer attends globally, the others use the sliding window
_GEMMA3_LOCAL_ROPE_THETA = 10000.0


def gemma3_config(source: GGUFSource) -> dict[str, Any]:
    """Gemma3ForCausalLM's (text-only) config from a ``gemma3`` GGUF file."""
    config = _common_config(source)
    layers = config["num_hidden_layers"]
    pattern = source.arch_value("attention.sliding_window_pattern", None)
    if isinstance(pattern, list):  # one flag per layer: true means sliding window
        if len(pattern) != layers:
            raise source.fail(f"attention.sliding_window_pattern has {len(pattern)} entries for {layers} layers")
        sliding = [bool(flag) for flag in pattern]
        period = _GEMMA3_SLIDING_PERIOD
    else:
        period = int(pattern) if pattern is not None else _GEMMA3_SLIDING_PERIOD
        sliding = [(layer + 1) % period != 0 for layer in range(layers)]
    global_rope = config.pop("rope_parameters")
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    # llama.cpp scales queries by 1/sqrt(head_dim), except for the 27B model (62 layers), whose
    # query_pre_attn_scalar is hidden_size / num_heads.
    query_scalar = hidden // heads if layers == 62 else config["head_dim"]
    softcap = source.arch_value("final_logit_softcapping", None)
    attn_softcap = source.arch_value("attn_logit_softcapping", None)
    return {
        **config,
        "_sliding_window_pattern": period,
        "attention_bias": False,
        "attn_logit_softcapping": float32_value(attn_softcap) if attn_softcap else None,
        "final_logit_softcapping": float32_value(softcap) if softcap else None,
        "hidden_activation": "gelu_pytorch_tanh",
        "layer_types": ["sliding_attention" if flag else "full_attention" for flag in sliding],
        "query_pre_attn_scalar": query_scalar,
        "rope_parameters": {
            "full_attention": global_rope,
            "sliding_attention": {"rope_theta": _GEMMA3_LOCAL_ROPE_THETA, "rope_type": "default"},
        },
        "sliding_window": int(source.arch_value("attention.sliding_window")),
        "use_bidirectional_attention": False,
    }
