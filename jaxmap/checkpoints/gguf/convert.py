"""The architectures the converter knows, and one conversion of a GGUF file into a directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ...errors import GGUFConversionError
from . import configs, tensors
from .reader import GGUFSource, read_source
from .tokenizer import write_tokenizer
from .writing import write_safetensors


@dataclass(frozen=True)
class ArchitectureConverter:
    """How one llama.cpp ``general.architecture`` becomes a Hugging Face checkpoint.

    ``hf_class`` and ``model_type`` are what the converted ``config.json`` names; they must be an
    entry of :data:`jaxmap.models.ARCHITECTURES` whose ``gguf`` is this architecture (a test
    checks both registries against each other).
    """

    hf_class: str
    model_type: str
    config: Callable[[GGUFSource], dict[str, Any]]
    block: dict[str, str]
    expected_names: Callable[[dict[str, Any]], set[str]]
    fix: Callable[[str, np.ndarray, dict[str, Any]], np.ndarray]


CONVERTERS: dict[str, ArchitectureConverter] = {
    "llama": ArchitectureConverter(
        "LlamaForCausalLM", "llama", configs.llama_config, tensors.LLAMA_BLOCK,
        tensors.expected_llama_names, tensors.fix_llama,
    ),
    "qwen2": ArchitectureConverter(
        "Qwen2ForCausalLM", "qwen2", configs.qwen2_config, tensors.LLAMA_BLOCK,
        tensors.expected_qwen2_names, tensors.keep,
    ),
    "gemma3": ArchitectureConverter(
        "Gemma3ForCausalLM", "gemma3_text", configs.gemma3_config, tensors.GEMMA3_BLOCK,
        tensors.expected_gemma3_names, tensors.fix_gemma3,
    ),
}

SUPPORTED_ARCHITECTURES = tuple(sorted(CONVERTERS))


def _converter(source: GGUFSource) -> ArchitectureConverter:
    if source.architecture not in CONVERTERS:
        raise GGUFConversionError(
            f"{source.path}: GGUF architecture {source.architecture!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return CONVERTERS[source.architecture]


def hf_config(source: GGUFSource) -> dict[str, Any]:
    """The Hugging Face ``config.json`` contents for a parsed GGUF file."""
    converter = _converter(source)
    return {
        "architectures": [converter.hf_class],
        "model_type": converter.model_type,
        **converter.config(source),
    }


def convert_into(path: Path, out: Path, progress: bool) -> str:
    """Write the converted checkpoint into the directory ``out``; return the GGUF architecture."""
    source = read_source(path)
    converter = _converter(source)
    config = hf_config(source)

    names = {
        gguf_name: tensors.hf_name(source, converter.block, gguf_name) for gguf_name in source.tensors
    }
    expected = converter.expected_names(config)
    missing = sorted(expected - set(names.values()))
    unexpected = sorted(set(names.values()) - expected)
    if missing or unexpected:
        raise source.fail(
            "the tensors do not form a complete model: "
            + (f"missing {missing[:5]}" if missing else "")
            + (f" unexpected {unexpected[:5]}" if unexpected else "")
        )
    embedding_rows = int(source.tensors["token_embd.weight"].shape[-1])
    if embedding_rows != config["vocab_size"]:
        raise source.fail(
            f"token_embd.weight has {embedding_rows} rows for a vocabulary of {config['vocab_size']}"
        )

    def converted() -> Iterator[tuple[str, np.ndarray]]:
        for gguf_name, tensor in source.tensors.items():
            name = names[gguf_name]
            yield name, converter.fix(name, tensors.dequantized(tensor), config)

    shapes = {
        names[gguf_name]: tensors.tensor_shape(tensor) for gguf_name, tensor in source.tensors.items()
    }
    stream: Iterator[tuple[str, np.ndarray]] = converted()
    if progress:
        from tqdm.auto import tqdm

        stream = tqdm(stream, total=len(shapes), desc=f"Converting {path.name}", unit="tensor")
    # The tokenizer first: it can still refuse the file, and it costs less than the weights.
    write_tokenizer(source, out)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_safetensors(out / "model.safetensors", shapes, stream)
    return source.architecture
