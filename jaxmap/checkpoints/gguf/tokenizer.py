"""Rebuilding the tokenizer from the vocabulary, merges and token types in the GGUF metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .reader import GGUFSource

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


def write_tokenizer(source: GGUFSource, out: Path) -> None:
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
