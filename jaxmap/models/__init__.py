"""Model ports: one configurable decoder (:mod:`.decoder`) and one adapter per HF architecture.

Adding an architecture means writing ``translate(ConfigReader) -> DecoderConfig`` and
``convert(WeightSource, DecoderConfig, dtype) -> Params`` and registering them as an
:class:`Architecture` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax.numpy as jnp

from . import gemma3, gpt2, gpt_neox, gptj, llama, moe, olmo, phi, stablelm
from . import gpt_bigcode, gpt_neo, opt, starcoder2, xglm
from . import bloom, deepseek, falcon, mpt
from .._moved import old_home
from ..errors import UnsupportedModelError
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params, hidden_states, unembedding, unembedding_bias
from .weights import WeightSource

@dataclass(frozen=True)
class Architecture:
    """One supported Hugging Face architecture.

    ``name`` is the class named in ``config.json``'s ``architectures``; ``model_type`` its
    config's ``model_type`` (how the paper's model list counts architectures); ``gguf`` the
    llama.cpp ``general.architecture`` that :mod:`jaxmap.checkpoints.gguf` converts to it, if any.
    """

    name: str
    model_type: str
    translate: Callable[[ConfigReader], DecoderConfig]
    convert: Callable[[WeightSource, DecoderConfig, Any], Params]
    gguf: str | None = None


def _registry(*architectures: Architecture) -> dict[str, Architecture]:
    return {architecture.name: architecture for architecture in architectures}


ARCHITECTURES: dict[str, Architecture] = _registry(
    Architecture("LlamaForCausalLM", "llama", llama.translate, llama.convert, gguf="llama"),
    Architecture("MistralForCausalLM", "mistral", llama.translate, llama.convert),
    Architecture("Qwen2ForCausalLM", "qwen2", llama.translate, llama.convert, gguf="qwen2"),
    Architecture("Qwen3ForCausalLM", "qwen3", llama.translate, llama.convert),
    Architecture("GPTNeoXForCausalLM", "gpt_neox", gpt_neox.translate, gpt_neox.convert),
    Architecture("GPT2LMHeadModel", "gpt2", gpt2.translate, gpt2.convert),
    Architecture("GemmaForCausalLM", "gemma", gemma3.translate, gemma3.convert),
    Architecture("Gemma2ForCausalLM", "gemma2", gemma3.translate, gemma3.convert),
    Architecture("Gemma3ForCausalLM", "gemma3_text", gemma3.translate, gemma3.convert, gguf="gemma3"),
    Architecture("OPTForCausalLM", "opt", opt.translate, opt.convert),
    Architecture("XGLMForCausalLM", "xglm", xglm.translate, xglm.convert),
    Architecture("GPTNeoForCausalLM", "gpt_neo", gpt_neo.translate, gpt_neo.convert),
    Architecture("GPTBigCodeForCausalLM", "gpt_bigcode", gpt_bigcode.translate, gpt_bigcode.convert),
    Architecture("Starcoder2ForCausalLM", "starcoder2", starcoder2.translate, starcoder2.convert),
    Architecture("GPTJForCausalLM", "gptj", gptj.translate, gptj.convert),
    Architecture("CodeGenForCausalLM", "codegen", gptj.translate, gptj.convert),
    Architecture("PhiForCausalLM", "phi", phi.translate, phi.convert),
    Architecture("Phi3ForCausalLM", "phi3", phi.translate, phi.convert),
    Architecture("StableLmForCausalLM", "stablelm", stablelm.translate, stablelm.convert),
    Architecture("MixtralForCausalLM", "mixtral", moe.translate, moe.convert),
    Architecture("Qwen2MoeForCausalLM", "qwen2_moe", moe.translate, moe.convert),
    Architecture("Qwen3MoeForCausalLM", "qwen3_moe", moe.translate, moe.convert),
    Architecture("DeepseekV2ForCausalLM", "deepseek_v2", deepseek.translate, deepseek.convert),
    Architecture("DeepseekV3ForCausalLM", "deepseek_v3", deepseek.translate, deepseek.convert),
    Architecture("OlmoForCausalLM", "olmo", olmo.translate, olmo.convert),
    Architecture("Olmo2ForCausalLM", "olmo2", olmo.translate, olmo.convert),
    Architecture("BloomForCausalLM", "bloom", bloom.translate, bloom.convert),
    Architecture("FalconForCausalLM", "falcon", falcon.translate, falcon.convert),
    Architecture("MptForCausalLM", "mpt", mpt.translate, mpt.convert),
    # MosaicML's own checkpoints name their remote-code class.
    Architecture("MPTForCausalLM", "mpt", mpt.translate, mpt.convert),
)

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
        config = ARCHITECTURES[architecture].translate(reader)
        reader.finish()
    except UnsupportedModelError as error:
        raise UnsupportedModelError(f"{model}: {error}") from None
    return architecture, config


def convert_weights(
    architecture: str, weights: WeightSource, config: DecoderConfig, dtype: str
) -> Params:
    """Build the decoder's params, as host (numpy) arrays in their final layout and ``dtype``,
    from a checkpoint's HF-named tensors."""
    return ARCHITECTURES[architecture].convert(weights, config, DTYPES[dtype])


# Old homes of names that moved: the Flax NNX module up to jaxmap.module (it builds on the engine,
# which builds on these ports), the params layout to .layout. They still work, with a warning.
__getattr__ = old_home(
    __name__, {"DecoderLM": "jaxmap.module", "load": "jaxmap.module", "init_params": "jaxmap.models.layout"}
)


__all__ = [
    "ARCHITECTURES",
    "Architecture",
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
    "unembedding_bias",
]
