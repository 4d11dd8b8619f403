"""GGUF checkpoints converted, once, into a plain Hugging Face directory.

``convert_gguf("model.gguf")`` returns a directory holding ``config.json``, ``model.safetensors``
(float32, Hugging Face tensor names and layouts) and the tokenizer files, so a GGUF file loads
through the same path as any local Hugging Face checkpoint. The conversion is what
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` does, without torch:

* tensors are dequantized with the ``gguf`` package and renamed from llama.cpp's names;
* llama.cpp's layout changes are undone: the q/k row permutation of the ``llama`` architecture,
  and the ``+ 1`` llama.cpp adds to every Gemma RMSNorm weight;
* the config is rebuilt from the metadata, with every field the Hugging Face config class writes;
* the tokenizer is rebuilt from the vocabulary, merges and token types in the metadata.

One module per concern: :mod:`.cache` (cache keys and directories, the entry point),
:mod:`.reader` (the file's metadata and tensors), :mod:`.configs` (config translation per
architecture), :mod:`.tensors` (tensor names and layout fixes), :mod:`.convert` (the registry of
architectures and one conversion), :mod:`.writing` (safetensors) and :mod:`.tokenizer`; and
:mod:`.resolver`, a ``.gguf`` path as a model reference for :func:`jaxmap.checkpoints.resolve`.
"""

from __future__ import annotations

from ...errors import GGUFConversionError
from .cache import CONVERTER_VERSION, SOURCE_FILE, convert_gguf, default_cache_dir, gguf_cache_key
from .convert import CONVERTERS, SUPPORTED_ARCHITECTURES, ArchitectureConverter, hf_config

__all__ = [
    "CONVERTERS",
    "CONVERTER_VERSION",
    "SOURCE_FILE",
    "SUPPORTED_ARCHITECTURES",
    "ArchitectureConverter",
    "GGUFConversionError",
    "convert_gguf",
    "default_cache_dir",
    "gguf_cache_key",
    "hf_config",
]
