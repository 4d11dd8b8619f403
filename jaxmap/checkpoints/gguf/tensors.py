"""Tensors: llama.cpp names -> Hugging Face names, the names a complete model has, and the fixes
that undo llama.cpp's layout changes."""

from __future__ import annotations

from typing import Any

import numpy as np

from .reader import GGUFSource

_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

_ATTENTION_AND_MLP = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

LLAMA_BLOCK = {**_ATTENTION_AND_MLP, "ffn_norm": "post_attention_layernorm"}

GEMMA3_BLOCK = {
    **_ATTENTION_AND_MLP,
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    # Gemma 3 normalizes both before and after each sublayer; llama.cpp's names shift by one.
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def expected_llama_names(config: dict[str, Any]) -> set[str]:
    """The Hugging Face tensor names of a complete Llama checkpoint with ``config``."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        names.add("lm_head.weight")
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        names.update(prefix + name + ".weight" for name in LLAMA_BLOCK.values())
        if config.get("attention_bias"):
            names.update(prefix + f"self_attn.{p}_proj.bias" for p in "qkvo")
        if config.get("mlp_bias"):
            names.update(prefix + f"mlp.{p}_proj.bias" for p in ("gate", "up", "down"))
    return names


def expected_qwen2_names(config: dict[str, Any]) -> set[str]:
    """Llama's names plus Qwen2's q/k/v biases."""
    names = expected_llama_names(config)
    for layer in range(config["num_hidden_layers"]):
        names.update(f"model.layers.{layer}.self_attn.{p}_proj.bias" for p in "qkv")
    return names


def expected_gemma3_names(config: dict[str, Any]) -> set[str]:
    """The Hugging Face tensor names of a complete Gemma 3 text checkpoint with ``config``."""
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        names.add("lm_head.weight")
    for layer in range(config["num_hidden_layers"]):
        names.update(f"model.layers.{layer}.{name}.weight" for name in GEMMA3_BLOCK.values())
    return names


def _unpermute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation.

    llama.cpp stores each head's rotary pairs as (first half, second half) interleaved, i.e. rows
    ``reshape(heads, 2, half, ...)`` transposed to ``(heads, half, 2, ...)``; this transposes back.
    """
    half = weight.shape[0] // heads // 2
    rest = weight.shape[1:]
    return weight.reshape(heads, half, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def fix_llama(hf_name: str, weight: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Undo the q/k row permutation llama.cpp applies to ``llama`` files."""
    if ".self_attn.q_proj." in hf_name:
        return _unpermute_rows(weight, config["num_attention_heads"])
    if ".self_attn.k_proj." in hf_name:
        return _unpermute_rows(weight, config["num_key_value_heads"])
    return weight


def fix_gemma3(hf_name: str, weight: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Gemma's RMSNorm multiplies by (1 + w); llama.cpp stores 1 + w so it can multiply directly."""
    if hf_name.endswith("norm.weight"):
        return weight - np.float32(1.0)
    return weight


def keep(hf_name: str, weight: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """No layout change (Qwen2 files are stored in Hugging Face's layout)."""
    return weight


def hf_name(source: GGUFSource, block: dict[str, str], gguf_name: str) -> str:
    """The Hugging Face name of tensor ``gguf_name``, given the architecture's per-layer names."""
    stem, _, suffix = gguf_name.rpartition(".")
    parts = stem.split(".")
    if suffix in ("weight", "bias"):
        if len(parts) == 1 and parts[0] in _GLOBAL_TENSORS:
            return f"{_GLOBAL_TENSORS[parts[0]]}.{suffix}"
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in block:
            return f"model.layers.{int(parts[1])}.{block[parts[2]]}.{suffix}"
    raise source.fail(f"tensor {gguf_name!r} has no Hugging Face counterpart in this converter")


def tensor_shape(tensor: Any) -> tuple[int, ...]:
    """A GGUF tensor's numpy (row-major) shape: ggml lists dimensions fastest-first."""
    return tuple(int(dim) for dim in reversed(tensor.shape.tolist()))


def dequantized(tensor: Any) -> np.ndarray:
    """A GGUF tensor as a float32 array in its numpy shape."""
    from gguf.quants import dequantize

    array = dequantize(tensor.data, tensor.tensor_type)
    return np.ascontiguousarray(array.reshape(tensor_shape(tensor)), dtype=np.float32)
