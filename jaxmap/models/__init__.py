"""Model ports: one configurable decoder (:mod:`.decoder`) and one adapter per HF architecture.

Adding an architecture means writing ``translate(ConfigReader) -> DecoderConfig`` and
``convert(WeightSource, DecoderConfig, dtype) -> Params`` and registering them below.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from . import gemma3, gpt2, gpt_neox, llama
from .adapter import ConfigReader, UnsupportedModelError, WeightSource
from .decoder import DecoderConfig, Params, hidden_states, unembedding

ARCHITECTURES: dict[str, tuple[Callable, Callable]] = {
    "LlamaForCausalLM": (llama.translate, llama.convert),
    "MistralForCausalLM": (llama.translate, llama.convert),
    "Qwen2ForCausalLM": (llama.translate, llama.convert),
    "Qwen3ForCausalLM": (llama.translate, llama.convert),
    "GPTNeoXForCausalLM": (gpt_neox.translate, gpt_neox.convert),
    "GPT2LMHeadModel": (gpt2.translate, gpt2.convert),
    "GemmaForCausalLM": (gemma3.translate, gemma3.convert),
    "Gemma2ForCausalLM": (gemma3.translate, gemma3.convert),
    "Gemma3ForCausalLM": (gemma3.translate, gemma3.convert),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def architecture_of(hf_config: dict, model: str) -> str:
    """The single supported architecture named in an HF config, or a clear error."""
    names = hf_config.get("architectures") or []
    if len(names) != 1:
        raise UnsupportedModelError(
            f"{model}: config.json must name exactly one architecture, found {names}"
        )
    if names[0] not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"{model}: unsupported architecture {names[0]!r} (jaxmap supports "
            f"{', '.join(sorted(ARCHITECTURES))})"
        )
    return names[0]


def translate_config(hf_config: dict, model: str) -> tuple[str, DecoderConfig]:
    """Translate an HF config dict, refusing anything the port would compute differently."""
    architecture = architecture_of(hf_config, model)
    reader = ConfigReader(hf_config, architecture)
    try:
        config = ARCHITECTURES[architecture][0](reader)
        reader.finish()
    except UnsupportedModelError as error:
        raise UnsupportedModelError(f"{model}: {error}") from None
    return architecture, config


def convert_weights(
    architecture: str, weights: WeightSource, config: DecoderConfig, dtype: str
) -> Params:
    """Build the decoder's params, as host (numpy) arrays in their final layout and ``dtype``,
    from a checkpoint's HF-named tensors."""
    return ARCHITECTURES[architecture][1](weights, config, DTYPES[dtype])


__all__ = [
    "ARCHITECTURES",
    "DTYPES",
    "DecoderConfig",
    "Params",
    "UnsupportedModelError",
    "WeightSource",
    "architecture_of",
    "convert_weights",
    "hidden_states",
    "translate_config",
    "unembedding",
]
