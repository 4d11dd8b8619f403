"""Tokenization under a BOS policy, done once per tokenizer and cached on disk.

Policies (docs/method.md):

* ``full`` (default): the start token (BOS, else the EOS/document separator) followed by the
  text's tokens without special tokens; every text token is scored, so ℓ is the probability of
  the whole string and comparable across tokenizers.
* ``paper``: ``tokenizer.encode(text)`` with the tokenizer's default special tokens, as the
  1,000-model paper's code did; its first token is never scored.

Either way a text becomes one id sequence whose first entry is context only.

A text with a context (:attr:`jaxmap.texts.TextSet.contexts`) is split by lm-evaluation-harness's
rule: trailing whitespace of the context moves to the front of the continuation, the context and
the continuation are encoded as one string, and the continuation's tokens are those past the
context's own token count; the model reads the context's own tokens followed by them. So a
word cut across the boundary is tokenized as in the whole string. ``full`` puts the start token first, as for a plain text; ``paper`` encodes both with the
tokenizer's default special tokens. An empty context is a plain text (under ``full``, the start
token alone, as lm-evaluation-harness does). :attr:`TokenizedTexts.first_targets` records where
each sequence's scored tokens begin.

With ``chat_template``, the context is the user turn and the continuation the assistant turn of
the tokenizer's own chat template; the scored tokens are everything the assistant turn adds
after the generation prompt (its end-of-turn marker included); where the prompt's last token
merges with the reply, the split is by the prompt's token count, as for a context. The
template's text supplies its own special tokens, so no start token is added under either policy.

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
    # Where each text's scored tokens begin (position in its sequence); None: at 1, every token
    # after the first (texts without contexts).
    first_targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.flat[self.offsets[index] : self.offsets[index + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def targets_from(self) -> np.ndarray:
        """Where each text's scored tokens begin: :attr:`first_targets`, or 1 for every text."""
        if self.first_targets is None:
            return np.ones(len(self), np.int64)
        return self.first_targets

    @classmethod
    def from_sequences(
        cls, sequences: list[list[int]], first_targets: list[int] | None = None
    ) -> "TokenizedTexts":
        offsets = np.zeros(len(sequences) + 1, np.int64)
        np.cumsum([len(s) for s in sequences], out=offsets[1:])
        flat = np.fromiter((t for s in sequences for t in s), np.int32, count=int(offsets[-1]))
        firsts = None if first_targets is None else np.asarray(first_targets, np.int64)
        return cls(flat, offsets, firsts)


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


def tokenizer_fingerprint(tokenizer, policy: str, chat_template: bool = False) -> str:
    """Hash of everything that decides the ids: the backend's full state, specials, policy
    (and the chat template, when texts go through it)."""
    state = {
        "backend": tokenizer.backend_tokenizer.to_str(),
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "add_bos": getattr(tokenizer, "add_bos_token", None),
        "add_eos": getattr(tokenizer, "add_eos_token", None),
        "policy": policy,
    }
    if chat_template:
        state["chat_template"] = chat_template_of(tokenizer)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:20]


def _longest_token_characters(tokenizer) -> int:
    return max(len(token.encode("utf-8")) for token in tokenizer.get_vocab())


def bounded_texts(texts: TextSet, tokenizer, keep_tokens: int | None) -> list[str]:
    """The texts as tokenization needs them: cut where far longer than ``keep_tokens`` tokens,
    or refused under rolling windows (``keep_tokens=None``) above the size limit. Texts with a
    context are never cut (their last tokens are the ones kept); their contexts are, from the
    front, by :func:`bounded_contexts`."""
    strings = list(texts.texts)
    if keep_tokens is None or texts.conditional:
        for text_id, text in zip(texts.ids, strings):
            if len(text) > MAX_ROLLING_TEXT_CHARACTERS:
                raise TextSetError(
                    f"{texts.source}: text {text_id!r} has {len(text):,} characters, more than the "
                    f"{MAX_ROLLING_TEXT_CHARACTERS:,} that can be scored whole (every token); cut it "
                    "into chunks (jaxmap chunk) or truncate long texts (--long-texts truncate)"
                )
    if keep_tokens is None or texts.conditional:
        return strings
    floor = _CUT_MARGIN * (keep_tokens + 1)
    if all(len(text) <= floor for text in strings):
        return strings
    limit = floor * _longest_token_characters(tokenizer)
    return [text[:limit] for text in strings]


def bounded_contexts(texts: TextSet, tokenizer, keep_tokens: int | None) -> list[str]:
    """The contexts as tokenization needs them: where a context is far longer than
    ``keep_tokens`` tokens, only its end can be kept (the scored tokens come last), so its
    front is cut, by the same margin as :func:`bounded_texts` cuts a text's end."""
    contexts = list(texts.contexts) or [""] * len(texts)
    if keep_tokens is None:
        return contexts
    floor = _CUT_MARGIN * (keep_tokens + 1)
    if all(len(context) <= floor for context in contexts):
        return contexts
    limit = floor * _longest_token_characters(tokenizer)
    return [context[-limit:] if len(context) > limit else context for context in contexts]


def split_context(context: str, continuation: str) -> tuple[str, str]:
    """lm-evaluation-harness's first step: the context's trailing whitespace moves to the
    front of the continuation."""
    kept = context.rstrip()
    return kept, context[len(kept):] + continuation


def chat_template_of(tokenizer) -> str:
    """The tokenizer's chat template, or :class:`CheckpointError` naming the model."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise CheckpointError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; score without --chat-template"
        )
    return template if isinstance(template, str) else json.dumps(template, sort_keys=True)


def chat_turns(tokenizer, context: str, continuation: str) -> tuple[str, str]:
    """The rendered prompt (the user turn ``context`` and the generation prompt) and the whole
    conversation with the assistant turn ``continuation``, through the tokenizer's template."""
    chat_template_of(tokenizer)
    user = {"role": "user", "content": context}
    prompt = tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(
        [user, {"role": "assistant", "content": continuation}], tokenize=False
    )
    if not whole.startswith(prompt):
        raise CheckpointError(
            f"tokenizer {tokenizer.name_or_path!r}: its chat template renders the prompt "
            "differently once the assistant turn follows, so the assistant's tokens cannot be "
            "told apart; score without --chat-template"
        )
    return prompt, whole


def tokenize(
    texts: TextSet, tokenizer, policy: str = "full", keep_tokens: int | None = None,
    chat_template: bool = False,
) -> TokenizedTexts:
    """Token ids for every text under ``policy`` (see the module docstring), and where the
    scored tokens of texts with contexts begin.

    ``keep_tokens``: how many leading tokens of a text will be used at most (None: all of them,
    as rolling windows need); for a text with a context, how many of its last tokens. Sequences
    can be longer than that; tokens past it are not exact. ``chat_template``: score each
    continuation as the assistant's reply to its context through the tokenizer's template.
    """
    if policy not in POLICIES:
        raise JaxmapError(f"unknown BOS policy {policy!r}; choose one of {POLICIES}")
    strings = bounded_texts(texts, tokenizer, keep_tokens)
    if chat_template:
        return _tokenize_chats(texts, tokenizer, bounded_contexts(texts, tokenizer, keep_tokens), strings)
    if not texts.conditional:
        return TokenizedTexts.from_sequences(_encode(strings, tokenizer, policy))
    contexts, continuations = zip(
        *(split_context(c, t) for c, t in zip(bounded_contexts(texts, tokenizer, keep_tokens), strings))
    )
    wholes = _encode([c + t for c, t in zip(contexts, continuations)], tokenizer, policy)
    # The start token (full) or the tokenizer's own specials (paper) are part of both.
    prefixes = _encode(list(contexts), tokenizer, policy)
    sequences, first_targets = [], []
    for context, prefix, whole in zip(texts.contexts, prefixes, wholes):
        if not context:
            sequences.append(whole)
            first_targets.append(1)
            continue
        # The model reads the context's own tokens, then the whole string's past their count.
        sequences.append(prefix + whole[len(prefix):])
        first_targets.append(max(len(prefix), 1))
    return TokenizedTexts.from_sequences(sequences, first_targets)


def _encode(strings: list[str], tokenizer, policy: str) -> list[list[int]]:
    """Each string's ids under ``policy``: with the tokenizer's specials (paper) or after the
    start token (full)."""
    if policy == "paper":
        return tokenizer(strings, add_special_tokens=True)["input_ids"]
    start = start_token(tokenizer)
    return [[start, *ids] for ids in tokenizer(strings, add_special_tokens=False)["input_ids"]]


def _tokenize_chats(texts: TextSet, tokenizer, contexts: list[str], continuations: list[str]) -> TokenizedTexts:
    """Ids of each conversation through the chat template; the scored tokens are the
    assistant turn's (:func:`chat_turns`)."""
    if not texts.conditional:
        raise TextSetError(
            f"{texts.source}: --chat-template needs texts with a context (the user turn): give "
            "'context' and 'continuation' fields"
        )
    turns = [chat_turns(tokenizer, c, t) for c, t in zip(contexts, continuations)]
    prompts = tokenizer([p for p, _ in turns], add_special_tokens=False)["input_ids"]
    wholes = tokenizer([w for _, w in turns], add_special_tokens=False)["input_ids"]
    # Where the prompt's last token merges with the reply (a reply that starts with a space
    # after the template's newline), the model reads the prompt's own tokens, then the
    # conversation's past their count: lm-evaluation-harness's rule for a context.
    sequences = [prompt + whole[len(prompt):] for prompt, whole in zip(prompts, wholes)]
    return TokenizedTexts.from_sequences(sequences, [max(len(ids), 1) for ids in prompts])


def _read_cache(path: Path, count: int) -> TokenizedTexts | None:
    """The cached tokens, or None when the file is missing or unusable (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            firsts = data["first_targets"] if "first_targets" in data.files else None
            tokens = TokenizedTexts(data["flat"], data["offsets"], firsts)
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
        # Missing, or damaged (a copy cut short, a foreign file): only a cache, so tokenize again.
        return None
    if len(tokens.offsets) != count + 1 or tokens.offsets[-1] != len(tokens.flat):
        return None
    if tokens.first_targets is not None and len(tokens.first_targets) != count:
        return None
    return tokens


def cached_tokenize(
    texts: TextSet, tokenizer, policy: str, cache_dir: str | Path | None, keep_tokens: int | None = None,
    chat_template: bool = False,
) -> tuple[TokenizedTexts, str]:
    """:func:`tokenize`, reusing ``cache_dir/<tokenizer>-<texts>.npz`` when present.

    Returns the tokens and the tokenizer fingerprint (models sharing it share the cache file).
    Tokens of texts cut for ``keep_tokens`` are cached under their own name, so that a later
    run that needs every token never reads them.
    """
    fingerprint = tokenizer_fingerprint(tokenizer, policy, chat_template)
    if cache_dir is None:
        return tokenize(texts, tokenizer, policy, keep_tokens, chat_template), fingerprint
    cache_dir = Path(cache_dir)
    cut = keep_tokens is not None and any(
        len(t) > _CUT_MARGIN * (keep_tokens + 1) for t in texts.texts + texts.contexts
    )
    suffix = f"-keep{keep_tokens}" if cut else ""
    path = cache_dir / f"{fingerprint}-{texts.fingerprint[:20]}{suffix}.npz"
    cached = _read_cache(path, len(texts))
    if cached is not None:
        return cached, fingerprint
    tokens = tokenize(texts, tokenizer, policy, keep_tokens, chat_template)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.npz")
    extra = {} if tokens.first_targets is None else {"first_targets": tokens.first_targets}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(temporary, flat=tokens.flat, offsets=tokens.offsets, **extra)
        os.replace(temporary, path)
    except OSError:
        # The cache only saves time; a full or read-only disk must not fail the model.
        temporary.unlink(missing_ok=True)
    return tokens, fingerprint
