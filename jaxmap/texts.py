"""Text sets: the fixed list of texts every model is scored on.

A text set is read from JSONL with one object per line and a ``text`` field. The id comes from
``id``, else ``index``, else the 0-based line number; every other field is kept as metadata.
This reads the 1,000-model paper's ``texts-10k-pile.jsonl`` unchanged.

A line may instead carry ``context`` and ``continuation`` (or ``prompt`` and ``response``): its
value is then log p(continuation | context), and only the continuation's tokens are scored
(:func:`jaxmap.tokenization.tokenize` splits them by lm-evaluation-harness's rule). In memory,
``texts`` holds the continuations and ``contexts`` the contexts; an empty context is a plain
text.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import TextSetError
from .outputs import atomic_output


@dataclass(frozen=True)
class TextSet:
    """An ordered set of texts with unique string ids and per-text metadata."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    metadata: tuple[dict, ...] = field(default=(), compare=False)
    source: str = field(default="<memory>", compare=False)
    # The context each text is conditioned on ("" for none), or () when no text has one.
    contexts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.texts):
            raise TextSetError(f"{self.source}: {len(self.ids)} ids for {len(self.texts)} texts")
        if self.metadata and len(self.metadata) != len(self.texts):
            raise TextSetError(f"{self.source}: metadata length differs from the number of texts")
        if self.contexts and len(self.contexts) != len(self.texts):
            raise TextSetError(f"{self.source}: {len(self.contexts)} contexts for {len(self.texts)} texts")
        if self.contexts and not any(self.contexts):
            # One spelling per set: a set whose contexts are all empty is a set without them.
            object.__setattr__(self, "contexts", ())
        for kind, values in (("id", self.ids), ("text", self.texts), ("context", self.contexts)):
            for position, value in enumerate(values):
                if not isinstance(value, str):
                    raise TextSetError(
                        f"{self.source}: {kind} {position} ({value!r:.40}) is not a string but {type(value).__name__}"
                    )
        seen: dict[str, int] = {}
        for position, text_id in enumerate(self.ids):
            if text_id in seen:
                raise TextSetError(
                    f"{self.source}: duplicate text id {text_id!r} (entries {seen[text_id] + 1} "
                    f"and {position + 1})"
                )
            seen[text_id] = position

    @classmethod
    def from_texts(cls, texts: Sequence[str], ids: Sequence[str] | None = None) -> "TextSet":
        """Build a text set from strings; ids default to their positions."""
        if isinstance(texts, str):
            raise TextSetError("texts must be a sequence of strings, not a single string")
        if not len(texts):
            raise TextSetError("no texts: the list of texts is empty")
        ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
        for position, (text_id, text) in enumerate(zip(ids, texts)):
            if not isinstance(text, str):
                raise TextSetError(f"text {position} (id {text_id!r}) is a {type(text).__name__}, not a string")
            problem = unstorable(text)
            if problem:
                raise TextSetError(f"text {position} (id {text_id!r}): {problem}")
            problem = unstorable(text_id)
            if problem:
                raise TextSetError(f"text {position}: the id {text_id!r} {problem}")
        return cls(tuple(ids), tuple(texts), tuple({} for _ in texts))

    @classmethod
    def from_pairs(
        cls, contexts: Sequence[str], continuations: Sequence[str], ids: Sequence[str] | None = None
    ) -> "TextSet":
        """Build a conditional text set: text i is scored as log p(continuations[i] |
        contexts[i]); ids default to the positions."""
        if isinstance(contexts, str) or isinstance(continuations, str):
            raise TextSetError("contexts and continuations must be sequences of strings, not single strings")
        if len(contexts) != len(continuations):
            raise TextSetError(f"{len(contexts)} contexts for {len(continuations)} continuations")
        plain = cls.from_texts(list(continuations), ids)
        for position, context in enumerate(contexts):
            if not isinstance(context, str):
                raise TextSetError(f"context {position} is a {type(context).__name__}, not a string")
            problem = unstorable(context)
            if problem:
                raise TextSetError(f"context {position} (id {plain.ids[position]!r}): {problem}")
        return cls(plain.ids, plain.texts, plain.metadata, contexts=tuple(contexts))

    @property
    def conditional(self) -> bool:
        """Whether some text has a context (its value is then log p(text | context))."""
        return bool(self.contexts)

    def context_of(self, position: int) -> str:
        """The context of text ``position`` ("" for none)."""
        return self.contexts[position] if self.contexts else ""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def fingerprint(self) -> str:
        """SHA-256 over ids, texts and contexts; two text sets score interchangeably iff these
        match. A set without contexts hashes exactly as before contexts existed."""
        digest = hashlib.sha256()
        if self.contexts:
            digest.update(b"contexts\0")
        for position, (text_id, text) in enumerate(zip(self.ids, self.texts)):
            parts = (text_id, text, self.contexts[position]) if self.contexts else (text_id, text)
            for part in parts:
                encoded = part.encode("utf-8")
                digest.update(len(encoded).to_bytes(8, "little"))
                digest.update(encoded)
        return digest.hexdigest()

    @property
    def byte_lengths(self) -> list[int]:
        """UTF-8 length of every text, the continuation where there is a context (for
        bits-per-byte conversions and byte-normalised accuracy)."""
        return [len(text.encode("utf-8")) for text in self.texts]

    def subset(self, positions: Iterable[int]) -> "TextSet":
        """The texts at ``positions``, in that order."""
        positions = list(positions)
        meta = self.metadata or tuple({} for _ in self.texts)
        return TextSet(
            tuple(self.ids[p] for p in positions),
            tuple(self.texts[p] for p in positions),
            tuple(meta[p] for p in positions),
            source=self.source,
            contexts=tuple(self.contexts[p] for p in positions) if self.contexts else (),
        )

    def to_jsonl(self, path: str | Path) -> None:
        """Write the set as JSONL (``id``, ``text`` or ``context`` and ``continuation``, and the
        metadata fields), atomically."""
        meta = self.metadata or tuple({} for _ in self.texts)
        with atomic_output(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
            for position, (text_id, text, extra) in enumerate(zip(self.ids, self.texts, meta)):
                context = self.context_of(position)
                body = {"context": context, "continuation": text} if context else {"text": text}
                record = {"id": text_id, **body, **extra}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be scored and stored, or None.

    A NUL character cannot be held by the store's HDF5 strings, and a lone surrogate (from JSON
    such as "\\ud800") is not Unicode: no tokenizer can encode it.
    """
    position = text.find("\0")
    if position >= 0:
        return f"contains a NUL character (U+0000) at position {position}; remove it"
    surrogate = _SURROGATE.search(text)
    if surrogate:
        return (
            f"contains a lone surrogate (U+{ord(surrogate.group()):04X}) at position "
            f"{surrogate.start()}, which is not valid Unicode"
        )
    return None


def _text_id(record: dict, line_number: int, where: str) -> tuple[str, str]:
    """The id of a record and where it came from (the field, or the line number)."""
    for key in ("id", "index"):
        if key in record:
            value = record.pop(key)
            # str(None), str(1.0) or str([..]) would make ids nobody wrote; refuse them instead.
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise TextSetError(
                    f"{where}: {key!r} must be a string or an integer, got {json.dumps(value)[:40]}"
                )
            return str(value), key
    return str(line_number - 1), "line number"


# The field pairs a conditional line may use: (context, continuation).
PAIR_FIELDS = (("context", "continuation"), ("prompt", "response"))


def _context_and_text(record: dict, where: str) -> tuple[str, str]:
    """Pop a record's context ("" for none) and text: ``text``, or one of :data:`PAIR_FIELDS`."""
    present = [name for name in ("text", *(f for pair in PAIR_FIELDS for f in pair)) if name in record]
    if not present:
        raise TextSetError(f"{where}: no 'text' field (nor 'context' and 'continuation')")
    pairs = [pair for pair in PAIR_FIELDS if any(name in record for name in pair)]
    if "text" in record and pairs:
        others = ", ".join(repr(name) for name in present if name != "text")
        raise TextSetError(f"{where}: both 'text' and {others}; a line is a text or a context and continuation")
    if len(pairs) > 1:
        raise TextSetError(f"{where}: both 'context'/'continuation' and 'prompt'/'response'; use one pair")
    if not pairs:
        fields = ("text",)
    else:
        fields = pairs[0]
        missing = [name for name in fields if name not in record]
        if missing:
            raise TextSetError(f"{where}: {fields[0]!r} and {fields[1]!r} go together; {missing[0]!r} is missing")
    values = [record.pop(name) for name in fields]
    for name, value in zip(fields, values):
        if not isinstance(value, str):
            raise TextSetError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    return ("", values[0]) if len(values) == 1 else (values[0], values[1])


_FOREIGN_STARTS = {
    b"\xff\xfe": "UTF-16 text; save it as UTF-8",
    b"\xfe\xff": "UTF-16 text; save it as UTF-8",
    b"\x1f\x8b": "gzip-compressed; decompress it first",
}


def load_texts(path: str | Path) -> TextSet:
    """Read a JSONL text set. Errors name the file, the 1-based line and the text's id.

    Accepted: blank lines (skipped), a UTF-8 byte-order mark at the start, CRLF line ends,
    extra fields (kept as metadata), an empty ``text``. Refused, each with one line naming the
    file and line: a missing file, a directory or an unreadable file; invalid UTF-8 or JSON; a
    byte-order mark after the first line (two files joined); a line that is not an object; a
    missing or non-string ``text``; an ``id``/``index`` that is neither a string nor an integer;
    a NUL character or lone surrogate in a text or id; an id used twice (both lines named); a
    file with no texts; a UTF-16 or gzip-compressed file (named as such).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise TextSetError(f"{path}: is a directory, not a JSONL text file")
    ids: list[str] = []
    texts: list[str] = []
    contexts: list[str] = []
    metadata: list[dict] = []
    lines_of: dict[str, int] = {}
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise TextSetError(f"{path}: no such text file") from None
    except OSError as error:
        raise TextSetError(f"{path}: cannot read ({error.strerror or error})") from None
    with handle:
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{line_number}"
            if line_number > 1 and raw.startswith(b"\xef\xbb\xbf"):
                raise TextSetError(f"{where}: a byte-order mark inside the file (were two files joined?)")
            if line_number == 1 and raw[:2] in _FOREIGN_STARTS:
                raise TextSetError(f"{path}: not a JSONL file: it is {_FOREIGN_STARTS[raw[:2]]}")
            try:
                record = json.loads(raw.decode("utf-8-sig" if line_number == 1 else "utf-8"))
            except UnicodeDecodeError as error:
                raise TextSetError(f"{where}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
            except json.JSONDecodeError as error:
                # json's messages are written to be followed by a position, some ending in "at".
                at = "" if error.msg.endswith(" at") else " at"
                raise TextSetError(f"{where}: not valid JSON ({error.msg}{at} column {error.colno})") from None
            if not isinstance(record, dict):
                raise TextSetError(f"{where}: expected a JSON object, got {type(record).__name__}")
            context, text = _context_and_text(record, where)
            text_id, origin = _text_id(record, line_number, where)
            for kind, value in (("text", text), ("context", context)):
                problem = unstorable(value)
                if problem:
                    raise TextSetError(f"{where}: {kind} {text_id!r} {problem}")
            problem = unstorable(text_id)
            if problem:
                raise TextSetError(f"{where}: the id {text_id!r} {problem}")
            if text_id in lines_of:
                implicit = " (its line number: the line has no 'id' or 'index')" if origin == "line number" else ""
                raise TextSetError(
                    f"{where}: duplicate text id {text_id!r}{implicit}, first used on line {lines_of[text_id]}"
                )
            lines_of[text_id] = line_number
            ids.append(text_id)
            texts.append(text)
            contexts.append(context)
            metadata.append(record)
    if not texts:
        raise TextSetError(f"{path}: no texts (the file is empty or holds only blank lines)")
    return TextSet(tuple(ids), tuple(texts), tuple(metadata), source=str(path), contexts=tuple(contexts))


def as_text_set(texts: TextSet | str | Path | Sequence[str]) -> TextSet:
    """A text set given as a :class:`TextSet` (returned as it is), a JSONL path
    (:func:`load_texts`) or a sequence of strings (:meth:`TextSet.from_texts`, ids ``0 … N-1``)."""
    if isinstance(texts, TextSet):
        return texts
    if isinstance(texts, (str, Path)):
        return load_texts(texts)
    return TextSet.from_texts(list(texts))


def chunk_document(document: str, max_bytes: int = 1024, min_bytes: int = 256) -> Iterator[str]:
    """Cut a document into consecutive UTF-8-safe chunks, as the 1,000-model paper did.

    Each chunk holds at most ``max_bytes`` bytes and never splits a character; chunks of
    ``min_bytes`` bytes or fewer are dropped.
    """
    if max_bytes < 4:
        raise TextSetError("max_bytes must be at least 4 (one UTF-8 character)")
    encoded = document.encode("utf-8")
    start = 0
    while start < len(encoded):
        end = min(start + max_bytes, len(encoded))
        # Step back over continuation bytes (0b10xxxxxx) so no character is split.
        while end < len(encoded) and end > start and (encoded[end] & 0xC0) == 0x80:
            end -= 1
        chunk = encoded[start:end]
        start = end
        if len(chunk) > min_bytes:
            yield chunk.decode("utf-8")
