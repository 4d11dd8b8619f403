"""Tokenization under a BOS policy, done once per tokenizer and cached on disk.

Policies (docs/method.md):

* ``full`` (default): the start token (BOS, else the EOS/document separator) followed by the
  text's tokens without special tokens; every text token is scored, so ℓ is the probability of
  the whole string and comparable across tokenizers.
* ``paper``: ``tokenizer.encode(text)`` with the tokenizer's default special tokens, as the
  1,000-model paper's code did; its first token is never scored.

Either way a text becomes one id sequence whose first entry is context only.

A text far longer than the tokens that will be kept (``keep_tokens``: the context, when long
texts are truncated) is cut by characters before tokenization, so that one huge line cannot take
gigabytes of memory to yield a few hundred tokens. The cut keeps 4 × ``keep_tokens`` tokens'
worth of characters at least (no vocabulary entry spans more characters than its own UTF-8
length), so the kept tokens lie far from the cut and come out exactly as from the whole text.
Under rolling windows every token is scored, so a text is refused above
:data:`MAX_ROLLING_TEXT_CHARACTERS` instead, naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CheckpointError, JaxmapError, TextSetError
from .texts import TextSet

POLICIES = ("full", "paper")
MAX_ROLLING_TEXT_CHARACTERS = 16 * 2**20
_CUT_MARGIN = 4


@dataclass(frozen=True)
class TokenizedTexts:
    """Token ids of every text, concatenated; text i is ``flat[offsets[i]:offsets[i+1]]``."""

    flat: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.flat[self.offsets[index] : self.offsets[index + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_sequences(cls, sequences: list[list[int]]) -> "TokenizedTexts":
        offsets = np.zeros(len(sequences) + 1, np.int64)
        np.cumsum([len(s) for s in sequences], out=offsets[1:])
        flat = np.fromiter((t for s in sequences for t in s), np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)


def load_tokenizer(directory: str | Path):
    """The fast tokenizer saved in an HF-layout directory.

    With a ``tokenizer.json`` this uses the generic fast tokenizer, whose import does not pull
    in torch (``AutoTokenizer`` does). Directories with only slow-tokenizer files go through
    ``AutoTokenizer``, which converts them.
    """
    directory = Path(directory)
    if (directory / "tokenizer.json").exists():
        from transformers.tokenization_utils_tokenizers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(directory))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def start_token(tokenizer) -> int:
    """The token the ``full`` policy puts before every text."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise CheckpointError(
        f"tokenizer {tokenizer.name_or_path!r} has neither a BOS nor an EOS token; "
        "use --bos-policy paper"
    )


def tokenizer_fingerprint(tokenizer, policy: str) -> str:
    """Hash of everything that decides the ids: the backend's full state, specials, policy."""
    state = {
        "backend": tokenizer.backend_tokenizer.to_str(),
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "add_bos": getattr(tokenizer, "add_bos_token", None),
        "add_eos": getattr(tokenizer, "add_eos_token", None),
        "policy": policy,
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:20]


def _longest_token_characters(tokenizer) -> int:
    return max(len(token.encode("utf-8")) for token in tokenizer.get_vocab())


def bounded_texts(texts: TextSet, tokenizer, keep_tokens: int | None) -> list[str]:
    """The texts as tokenization needs them: cut where far longer than ``keep_tokens`` tokens,
    or refused under rolling windows (``keep_tokens=None``) above the size limit."""
    strings = list(texts.texts)
    if keep_tokens is None:
        for text_id, text in zip(texts.ids, strings):
            if len(text) > MAX_ROLLING_TEXT_CHARACTERS:
                raise TextSetError(
                    f"{texts.source}: text {text_id!r} has {len(text):,} characters, more than the "
                    f"{MAX_ROLLING_TEXT_CHARACTERS:,} that can be scored whole (every token); cut it "
                    "into chunks (jaxmap chunk) or truncate long texts (--long-texts truncate)"
                )
        return strings
    floor = _CUT_MARGIN * (keep_tokens + 1)
    if all(len(text) <= floor for text in strings):
        return strings
    limit = floor * _longest_token_characters(tokenizer)
    return [text[:limit] for text in strings]


def tokenize(
    texts: TextSet, tokenizer, policy: str = "full", keep_tokens: int | None = None
) -> TokenizedTexts:
    """Token ids for every text under ``policy`` (see the module docstring).

    ``keep_tokens``: how many leading tokens of a text will be used at most (None: all of them,
    as rolling windows need). Sequences can be longer than that; tokens past it are not exact.
    """
    if policy not in POLICIES:
        raise JaxmapError(f"unknown BOS policy {policy!r}; choose one of {POLICIES}")
    strings = bounded_texts(texts, tokenizer, keep_tokens)
    if policy == "paper":
        encoded = tokenizer(strings, add_special_tokens=True)["input_ids"]
        return TokenizedTexts.from_sequences(encoded)
    start = start_token(tokenizer)
    encoded = tokenizer(strings, add_special_tokens=False)["input_ids"]
    return TokenizedTexts.from_sequences([[start, *ids] for ids in encoded])


def _read_cache(path: Path, count: int) -> TokenizedTexts | None:
    """The cached tokens, or None when the file is missing or unusable (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            tokens = TokenizedTexts(data["flat"], data["offsets"])
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
        # Missing, or damaged (a copy cut short, a foreign file): only a cache, so tokenize again.
        return None
    if len(tokens.offsets) != count + 1 or tokens.offsets[-1] != len(tokens.flat):
        return None
    return tokens


def cached_tokenize(
    texts: TextSet, tokenizer, policy: str, cache_dir: str | Path | None, keep_tokens: int | None = None
) -> tuple[TokenizedTexts, str]:
    """:func:`tokenize`, reusing ``cache_dir/<tokenizer>-<texts>.npz`` when present.

    Returns the tokens and the tokenizer fingerprint (models sharing it share the cache file).
    Tokens of texts cut for ``keep_tokens`` are cached under their own name, so that a later
    run that needs every token never reads them.
    """
    fingerprint = tokenizer_fingerprint(tokenizer, policy)
    if cache_dir is None:
        return tokenize(texts, tokenizer, policy, keep_tokens), fingerprint
    cache_dir = Path(cache_dir)
    cut = keep_tokens is not None and any(len(t) > _CUT_MARGIN * (keep_tokens + 1) for t in texts.texts)
    suffix = f"-keep{keep_tokens}" if cut else ""
    path = cache_dir / f"{fingerprint}-{texts.fingerprint[:20]}{suffix}.npz"
    cached = _read_cache(path, len(texts))
    if cached is not None:
        return cached, fingerprint
    tokens = tokenize(texts, tokenizer, policy, keep_tokens)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.npz")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(temporary, flat=tokens.flat, offsets=tokens.offsets)
        os.replace(temporary, path)
    except OSError:
        # The cache only saves time; a full or read-only disk must not fail the model.
        temporary.unlink(missing_ok=True)
    return tokens, fingerprint
