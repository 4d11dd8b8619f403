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

Results are cached under ``<cache>/gguf/<key>/`` (default cache: ``$JAXMAP_CACHE`` or
``~/.cache/jaxmap``). The key hashes the file's size, modification time and its first and last
16 MiB, so a second call costs a stat and two short reads. A directory is built under a temporary
name and renamed into place when complete, so an interrupted conversion never leaves a directory
that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from ..errors import GGUFConversionError

__all__ = [
    "CONVERTER_VERSION",
    "SUPPORTED_ARCHITECTURES",
    "GGUFConversionError",
    "convert_gguf",
    "default_cache_dir",
    "gguf_cache_key",
]

# Part of the cache key: bump it whenever the output of a conversion changes.
CONVERTER_VERSION = 2

_KEY_WINDOW = 16 << 20  # bytes hashed at each end of the file for the cache key
SOURCE_FILE = "jaxmap_source.json"



def default_cache_dir() -> Path:
    """The jaxmap cache root: ``$JAXMAP_CACHE`` if set, else ``~/.cache/jaxmap``."""
    return Path(os.environ.get("JAXMAP_CACHE") or Path.home() / ".cache" / "jaxmap")


def gguf_cache_key(gguf_path: str | Path) -> str:
    """The cache key of a GGUF file: a hash of its size, mtime, ends and the converter version.

    Hashing the whole file would cost about a second per gigabyte on every load. The ends hold
    the metadata (architecture, quantization, vocabulary) and the first and last tensors' data;
    with the size and modification time, that tells apart any two files met in practice.
    """
    path = Path(gguf_path)
    stat = path.stat()
    digest = hashlib.sha256()
    digest.update(f"jaxmap-gguf-v{CONVERTER_VERSION}:{stat.st_size}:{stat.st_mtime_ns}:".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_KEY_WINDOW))
        handle.seek(max(stat.st_size - _KEY_WINDOW, 0))
        digest.update(handle.read(_KEY_WINDOW))
    return digest.hexdigest()[:32]


def convert_gguf(
    gguf_path: str | Path, cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """Convert a GGUF file to a Hugging Face directory, or return the cached conversion.

    Args:
        gguf_path: the ``.gguf`` file.
        cache_dir: the cache root (default :func:`default_cache_dir`); the result lands in
            ``<cache_dir>/gguf/<key>/``.
        progress: show a progress bar while dequantizing.

    Returns:
        The directory with ``config.json``, ``model.safetensors``, the tokenizer files and
        ``jaxmap_source.json`` (source path, key, architecture, conversion time).

    Raises:
        GGUFConversionError: the file is not GGUF, or holds an architecture, tensor, tokenizer or
            metadata value this converter does not translate.
    """
    source = Path(gguf_path).expanduser().resolve()
    if not source.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    key = gguf_cache_key(source)
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()).expanduser()
    target = root / "gguf" / key
    if (target / SOURCE_FILE).is_file():
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        started = time.perf_counter()
        architecture = _convert_into(source, building, progress)
        record = {
            "source": str(source),
            "source_size": source.stat().st_size,
            "source_mtime_ns": source.stat().st_mtime_ns,
            "cache_key": key,
            "gguf_architecture": architecture,
            "converter_version": CONVERTER_VERSION,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "conversion_seconds": round(time.perf_counter() - started, 3),
        }
        (building / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        building.chmod(0o755)
        try:
            os.rename(building, target)
        except OSError:
            # Another process finished the same conversion first; its result is as good as ours.
            if not (target / SOURCE_FILE).is_file():
                raise
            shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target


# --------------------------------------------------------------------------------------------
# Reading the file


_REQUIRED = object()


@dataclass
class _Source:
    """The parsed GGUF file: metadata as Python values, the tensors, and the file for errors."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, Any]  # gguf name -> gguf.ReaderTensor
    architecture: str

    def fail(self, message: str) -> GGUFConversionError:
        return GGUFConversionError(f"{self.path} (GGUF architecture {self.architecture!r}): {message}")

    def arch_value(self, name: str, default: Any = _REQUIRED) -> Any:
        """The metadata value ``<architecture>.<name>``; without a default, absence is an error."""
        key = f"{self.architecture}.{name}"
        if key in self.metadata:
            return self.metadata[key]
        if default is _REQUIRED:
            raise self.fail(f"metadata key {key!r} is missing")
        return default


def _read_source(path: Path) -> _Source:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, struct.error) as error:
        raise GGUFConversionError(f"{path}: not a readable GGUF file ({error})") from None
    metadata = {name: field.contents() for name, field in reader.fields.items()}
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise GGUFConversionError(f"{path}: no general.architecture in the GGUF metadata")
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    return _Source(path, metadata, tensors, architecture)


def _float32_value(value: float) -> float:
    """The shortest decimal that reads back as the same float32.

    GGUF stores hyperparameters as float32, so 1e-5 arrives as 9.999999747378752e-06; this gives
    back the 1e-05 the original config held.
    """
    return float(str(np.float32(value)))


# --------------------------------------------------------------------------------------------
# Configs: one builder per architecture, writing every field the transformers config class writes


def _token_ids(source: _Source) -> dict[str, int | None]:
    return {
        f"{name}_token_id": source.metadata.get(f"tokenizer.ggml.{key}_token_id")
        for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"))
    }


def _vocab_size(source: _Source) -> int:
    tokens = source.metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        return int(source.arch_value("vocab_size"))
    return int(source.arch_value("vocab_size", len(tokens)))


def _attention_shape(source: _Source) -> dict[str, int]:
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


def _rope_parameters(source: _Source, theta: float) -> dict[str, Any]:
    """``rope_parameters`` for the global RoPE, refusing scalings that are not translated."""
    scaling = source.arch_value("rope.scaling.type", "none")
    parameters: dict[str, Any] = {"rope_theta": theta, "rope_type": "default"}
    if scaling == "linear":
        parameters = {
            "rope_theta": theta,
            "rope_type": "linear",
            "factor": _float32_value(source.arch_value("rope.scaling.factor")),
        }
    elif scaling != "none":
        raise source.fail(f"rope.scaling.type {scaling!r} is not supported (only none and linear)")
    return parameters


def _common_config(source: _Source) -> dict[str, Any]:
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
        "rms_norm_eps": _float32_value(source.arch_value("attention.layer_norm_rms_epsilon")),
        "rope_parameters": _rope_parameters(
            source, _float32_value(source.arch_value("rope.freq_base", 10000.0))
        ),
        # llama.cpp writes the output projection only when it is not the embedding matrix.
        "tie_word_embeddings": "output.weight" not in source.tensors,
        "use_cache": True,
        "vocab_size": _vocab_size(source),
    }


def _llama_config(source: _Source) -> dict[str, Any]:
    if "rope_freqs.weight" in source.tensors:
        raise source.fail(
            "tensor rope_freqs.weight (Llama 3.1-style RoPE frequency factors) is not supported"
        )
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **_common_config(source),
        "attention_bias": "blk.0.attn_q.bias" in source.tensors,
        "hidden_act": "silu",
        "mlp_bias": "blk.0.ffn_up.bias" in source.tensors,
        "pretraining_tp": 1,
    }


def _qwen2_config(source: _Source) -> dict[str, Any]:
    config = _common_config(source)
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
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


def _gemma3_config(source: _Source) -> dict[str, Any]:
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
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        **config,
        "_sliding_window_pattern": period,
        "attention_bias": False,
        "attn_logit_softcapping": _float32_value(attn_softcap) if attn_softcap else None,
        "final_logit_softcapping": _float32_value(softcap) if softcap else None,
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


# --------------------------------------------------------------------------------------------
# Tensors: llama.cpp names -> Hugging Face names, and the layout fixes


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

_LLAMA_BLOCK = {**_ATTENTION_AND_MLP, "ffn_norm": "post_attention_layernorm"}

_GEMMA3_BLOCK = {
    **_ATTENTION_AND_MLP,
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    # Gemma 3 normalizes both before and after each sublayer; llama.cpp's names shift by one.
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def _expected_llama_names(config: dict[str, Any]) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        names.add("lm_head.weight")
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        names.update(prefix + name + ".weight" for name in _LLAMA_BLOCK.values())
        if config.get("attention_bias"):
            names.update(prefix + f"self_attn.{p}_proj.bias" for p in "qkvo")
        if config.get("mlp_bias"):
            names.update(prefix + f"mlp.{p}_proj.bias" for p in ("gate", "up", "down"))
    return names


def _expected_qwen2_names(config: dict[str, Any]) -> set[str]:
    names = _expected_llama_names(config)
    for layer in range(config["num_hidden_layers"]):
        names.update(f"model.layers.{layer}.self_attn.{p}_proj.bias" for p in "qkv")
    return names


def _expected_gemma3_names(config: dict[str, Any]) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        names.add("lm_head.weight")
    for layer in range(config["num_hidden_layers"]):
        names.update(f"model.layers.{layer}.{name}.weight" for name in _GEMMA3_BLOCK.values())
    return names


def _unpermute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation.

    llama.cpp stores each head's rotary pairs as (first half, second half) interleaved, i.e. rows
    ``reshape(heads, 2, half, ...)`` transposed to ``(heads, half, 2, ...)``; this transposes back.
    """
    half = weight.shape[0] // heads // 2
    rest = weight.shape[1:]
    return weight.reshape(heads, half, 2, *rest).swapaxes(1, 2).reshape(weight.shape)


def _fix_llama(hf_name: str, weight: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    if ".self_attn.q_proj." in hf_name:
        return _unpermute_rows(weight, config["num_attention_heads"])
    if ".self_attn.k_proj." in hf_name:
        return _unpermute_rows(weight, config["num_key_value_heads"])
    return weight


def _fix_gemma3(hf_name: str, weight: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    # Gemma's RMSNorm multiplies by (1 + w); llama.cpp stores 1 + w so it can multiply directly.
    if hf_name.endswith("norm.weight"):
        return weight - np.float32(1.0)
    return weight


def _keep(hf_name: str, weight: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    return weight


@dataclass(frozen=True)
class _Architecture:
    config: Callable[[_Source], dict[str, Any]]
    block: dict[str, str]
    expected_names: Callable[[dict[str, Any]], set[str]]
    fix: Callable[[str, np.ndarray, dict[str, Any]], np.ndarray]


_ARCHITECTURES: dict[str, _Architecture] = {
    "llama": _Architecture(_llama_config, _LLAMA_BLOCK, _expected_llama_names, _fix_llama),
    "qwen2": _Architecture(_qwen2_config, _LLAMA_BLOCK, _expected_qwen2_names, _keep),
    "gemma3": _Architecture(_gemma3_config, _GEMMA3_BLOCK, _expected_gemma3_names, _fix_gemma3),
}

SUPPORTED_ARCHITECTURES = tuple(sorted(_ARCHITECTURES))


def _hf_name(source: _Source, block: dict[str, str], gguf_name: str) -> str:
    stem, _, suffix = gguf_name.rpartition(".")
    parts = stem.split(".")
    if suffix in ("weight", "bias"):
        if len(parts) == 1 and parts[0] in _GLOBAL_TENSORS:
            return f"{_GLOBAL_TENSORS[parts[0]]}.{suffix}"
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in block:
            return f"model.layers.{int(parts[1])}.{block[parts[2]]}.{suffix}"
    raise source.fail(f"tensor {gguf_name!r} has no Hugging Face counterpart in this converter")


def _dequantized(tensor: Any) -> np.ndarray:
    from gguf.quants import dequantize

    array = dequantize(tensor.data, tensor.tensor_type)
    # ggml lists dimensions fastest-first; numpy's row-major shape is the reverse.
    shape = tuple(int(dim) for dim in reversed(tensor.shape.tolist()))
    return np.ascontiguousarray(array.reshape(shape), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Writing


def _convert_into(path: Path, out: Path, progress: bool) -> str:
    """Write the converted checkpoint into ``out``; return the GGUF architecture."""
    source = _read_source(path)
    if source.architecture not in _ARCHITECTURES:
        raise GGUFConversionError(
            f"{path}: GGUF architecture {source.architecture!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    arch = _ARCHITECTURES[source.architecture]
    config = arch.config(source)

    names = {gguf_name: _hf_name(source, arch.block, gguf_name) for gguf_name in source.tensors}
    expected = arch.expected_names(config)
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
            hf_name = names[gguf_name]
            yield hf_name, arch.fix(hf_name, _dequantized(tensor), config)

    shapes = {
        names[gguf_name]: tuple(int(dim) for dim in reversed(tensor.shape.tolist()))
        for gguf_name, tensor in source.tensors.items()
    }
    tensors: Iterator[tuple[str, np.ndarray]] = converted()
    if progress:
        from tqdm.auto import tqdm

        tensors = tqdm(tensors, total=len(shapes), desc=f"Converting {path.name}", unit="tensor")
    # The tokenizer first: it can still refuse the file, and it costs less than the weights.
    _write_tokenizer(source, out)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    _write_safetensors(out / "model.safetensors", shapes, tensors)
    return source.architecture


def _write_safetensors(
    path: Path, shapes: dict[str, tuple[int, ...]], tensors: Iterator[tuple[str, np.ndarray]]
) -> None:
    """Stream float32 tensors into a safetensors file, one tensor in memory at a time.

    The header is written first from the shapes, so the file never needs the whole model in
    memory (0.5B parameters would be 2 GB of float32 twice over with ``save_file``).
    """
    order = list(shapes)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in order:
        size = int(np.prod(shapes[name], dtype=np.int64)) * 4
        header[name] = {"dtype": "F32", "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    position = {name: index for index, name in enumerate(order)}
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for expected_index, (name, array) in enumerate(tensors):
            if position.get(name) != expected_index or tuple(array.shape) != shapes[name]:
                raise AssertionError(f"tensor {name} arrived out of order or with the wrong shape")
            handle.write(np.ascontiguousarray(array, dtype="<f4").tobytes())


# --------------------------------------------------------------------------------------------
# Tokenizer


# llama.cpp's pre-tokenizer groups that transformers' GGUF loader does not know: these split every
# digit on its own before the GPT-2 regex (llama.cpp's STARCODER/REFACT/SMOLLM/... group).
_DIGIT_THEN_GPT2 = {"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva"}
_GPT2_REGEX_ONLY = {"gpt2", "mpt", "olmo", "jais"}

_TOKENIZER_KEYS = {
    "model": "tokenizer_type",
    "pre": "pre_tokenizer_type",
    "tokens": "tokens",
    "scores": "scores",
    "token_type": "token_type",
    "merges": "merges",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "unknown_token_id": "unk_token_id",
    "padding_token_id": "pad_token_id",
    "add_space_prefix": "add_prefix_space",
}


def _write_tokenizer(source: _Source, out: Path) -> None:
    """Rebuild the tokenizer from the GGUF vocabulary and save it with ``save_pretrained``.

    The vocabulary, merges, normalizer, decoder and special tokens come from transformers' own GGUF
    tokenizer builders (torch-free), so the result encodes exactly as
    ``AutoTokenizer.from_pretrained(..., gguf_file=...)``. The pre-tokenizer follows llama.cpp's
    ``tokenizer.ggml.pre``; a value neither side defines is refused rather than guessed.
    """
    from tokenizers import Regex, pre_tokenizers

    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_PRE_TOKENIZER_SPLITS,
            convert_gguf_tokenizer,
        )
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError as error:
        import transformers

        raise source.fail(
            f"building the tokenizer needs the GGUF tokenizer builders of transformers 5 "
            f"(installed: transformers {transformers.__version__}; {error})"
        ) from None

    meta = source.metadata
    spec = {
        name: meta[f"tokenizer.ggml.{key}"]
        for key, name in _TOKENIZER_KEYS.items()
        if f"tokenizer.ggml.{key}" in meta
    }
    model, pre = spec.get("tokenizer_type"), spec.get("pre_tokenizer_type", "default")
    if "tokens" not in spec:
        raise source.fail("no tokenizer.ggml.tokens: the file carries no vocabulary")
    if model == "gpt2" and not (
        pre in GGUF_PRE_TOKENIZER_SPLITS or pre in _DIGIT_THEN_GPT2 or pre in _GPT2_REGEX_ONLY
    ):
        raise source.fail(f"byte-level tokenizer with pre-tokenizer {pre!r} is not supported")
    if model == "llama" and pre != "default":
        raise source.fail(f"sentencepiece tokenizer with pre-tokenizer {pre!r} is not supported")
    if model not in ("gpt2", "llama"):
        raise source.fail(f"tokenizer.ggml.model {model!r} is not supported (only gpt2 and llama)")

    backend, _ = convert_gguf_tokenizer(source.architecture, spec)
    if model == "gpt2" and pre in _DIGIT_THEN_GPT2:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )

    tokens = spec["tokens"]
    special = {
        name: tokens[spec[f"{name}_id"]] if spec.get(f"{name}_id") is not None else None
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
    }
    # llama.cpp adds BOS to a sentencepiece vocabulary unless the file says otherwise.
    add_bos = meta.get("tokenizer.ggml.add_bos_token", model == "llama")
    options: dict[str, Any] = {
        "add_bos_token": bool(add_bos),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        **{name: token for name, token in special.items() if token is not None},
    }
    if "tokenizer.chat_template" in meta:
        options["chat_template"] = meta["tokenizer.chat_template"]
    tokenizer = TokenizersBackend(tokenizer_object=backend, **options)
    tokenizer.save_pretrained(out)
