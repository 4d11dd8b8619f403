"""The store: one row of per-text log-likelihoods per model, crash-safe, committed in O(row).

A store is a file and, beside it, a journal directory::

    map.h5          the matrix (HDF5, readable with plain h5py)
    map.h5.rows/    one file per row committed since the matrix was last compacted
    map.h5.lock     writers serialise their commits on it
    map.h5.job.lock every running job holds it shared; merge refuses a part while it is held

HDF5 layout::

    /texts        [N] utf-8 strings   the text set, in order (the continuations, with contexts)
    /text_ids     [N] utf-8 strings
    /text_bytes   [N] int64           UTF-8 length of each text
    /contexts     [N] utf-8 strings   (only for a text set with contexts) each text's context
    /questions    [N] utf-8 strings   (only for a text set with questions) JSON per text: its
                                      ``question_id`` and ``gold``, or {} where it has none
    /loglik       [K, N] float64      log-likelihood in nats (sum over scored tokens)
    /ntokens      [K, N] int32        number of scored tokens
    /truncated    [K, N] bool         text was cut to the model's context
    /is_greedy    [K, N] bool         (format 3) every scored token was the model's argmax;
                                      recorded for text sets with contexts, false otherwise
    /continuation_tokens [K, N] int32 (format 3) the continuation's tokens under the model's
                                      tokenizer, scored or not (more than ntokens where the
                                      window cut it); for text sets with contexts, 0 otherwise
    /models       [K] utf-8 strings   model references as given
    /model_meta   [K] utf-8 strings   JSON per model: key, revision, architecture, dtype, ...
    /row_checksum [K] utf-8 strings   sha256 of each row (model, meta, loglik, ntokens, truncated,
                                      and its token log-probs if it has them)
    /token_logprob [T] float32        (only if a row has them) every scored token's log-prob,
                                      rows in order, texts in order within a row
    /token_offsets [K, N+1] int64     row k's text j is token_logprob[off[k, j]:off[k, j+1]];
                                      all -1 for a row scored without token log-probs
    attrs: format, format_version, text_fingerprint, n_texts, settings (JSON),
           settings_checksum, created_by, journal_sequence (the last journal row folded in)

The per-text columns (loglik, ntokens, truncated, is_greedy, continuation_tokens) are listed once, in :data:`COLUMNS`, which
drives the matrix's datasets, the journal's row files and the checksums.

Why a journal: committing a row by rewriting the matrix would cost O(store) per model (76 GB
written over a 1,000 × 10,000 job). A row is instead written to a temporary file in the
journal, fsynced and renamed to ``<sequence>.row``: atomic, and O(row). Compaction folds the
journal into the matrix by writing a whole new file and renaming it over the old one; the new
file records the last sequence it holds, so row files at or below it are ignored (and deleted)
and a crash between the rename and the deletions neither loses nor duplicates a row. Jobs
compact when they finish, and whenever the journal outgrows the matrix, so the amortised cost
of a commit stays O(row). Plain h5py readers see the compacted rows; :func:`open_store` sees all.

Every row carries a checksum; every reader verifies it and refuses a damaged row by name.
A store's identity is its text set and its settings (BOS policy, dtype, ...): rows computed
under other settings are not comparable, so a writer asking for other settings is refused.
The settings have a checksum of their own, so that an edited settings attribute cannot let
rows of other settings in.

A store path that is a symbolic link is resolved once: the file, its journal and its locks are
where the link points, so the link stays a link and every name of the store shares one lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from .errors import StoreError, StoreMismatchError
from .row_metadata import RowMetadata
from .texts import TextSet

FORMAT = "jaxmap-store"
FORMAT_VERSION = 3
_STRING = h5py.string_dtype("utf-8")
_ROW_MAGIC = b"JAXMAP-ROW 1\n"
_ROW_NAME = re.compile(r"^(\d{12})\.row$")
# The journal is folded into the matrix once it holds more rows than this or than the matrix.
_COMPACT_AFTER_ROWS = 64
# HDF5's own bookkeeping on top of the raw arrays, for the free-space check.
_SPACE_MARGIN = 1 << 20


@dataclass(frozen=True)
class Column:
    """A per-text value that every row holds: a K×N dataset of the matrix, a block of each
    journal row file and a part of each row's checksum, all three in :data:`COLUMNS` order.

    A new column is one entry here, with ``since`` the new :data:`FORMAT_VERSION`: stores of
    older formats are still read, their rows holding ``fill`` in it, and keep their checksums.
    """

    name: str
    # In memory and in the matrix.
    dtype: np.dtype
    # In journal row files and in checksums: fixed width, little-endian.
    stored: str
    # The first store format that holds the column.
    since: int = 1
    # What a row of an older format holds in it.
    fill: float | int | bool = 0


COLUMNS = (
    Column("loglik", np.dtype(np.float64), "<f8"),
    Column("ntokens", np.dtype(np.int32), "<i4"),
    Column("truncated", np.dtype(bool), "u1"),
    Column("is_greedy", np.dtype(bool), "u1", since=3, fill=False),
    Column("continuation_tokens", np.dtype(np.int32), "<i4", since=3, fill=0),
)
# The text metadata a store keeps: what multiple-choice accuracy needs (jaxmap accuracy).
QUESTION_FIELDS = ("question_id", "gold")
# The format that introduced checksums: its columns are hashed as they are, so that the
# checksums of its rows never change; columns added later are hashed only where they differ
# from their fill.
_CHECKSUM_FORMAT = 2


def _columns_of(version: int) -> list[Column]:
    """The per-text columns a store of format ``version`` holds."""
    return [column for column in COLUMNS if column.since <= version]


def _filled(values: dict[str, np.ndarray], n_texts: int) -> dict[str, np.ndarray]:
    """A row's ``values`` plus, for each column its format did not hold yet, the column's fill."""
    return {
        column.name: values[column.name] if column.name in values else np.full(n_texts, column.fill, column.dtype)
        for column in COLUMNS
    }


@dataclass(frozen=True)
class Row:
    """One model's committed row, as stored: ``columns`` holds every per-text column by name
    (empty where only names and metadata were read)."""

    model: str
    meta_json: str
    columns: dict[str, np.ndarray]
    checksum: str | None
    # Every scored token's log-prob (float32, texts in order, ntokens.sum() values), if kept.
    token_logprobs: np.ndarray | None = None

    @property
    def meta(self) -> dict:
        return json.loads(self.meta_json)

    @property
    def metadata(self) -> RowMetadata:
        return RowMetadata.parse(self.model, self.meta)

    @property
    def key(self) -> str:
        """What makes two rows the same model (the canonical reference), else the name."""
        return self.metadata.key


def row_checksum(row: Row) -> str:
    """sha256 over a row's name, metadata and values, in a fixed byte order. Columns added
    after format 2 are hashed with their name and only where a value differs from their fill,
    and token log-probs likewise only where the row has them: a row without them has the
    checksum it had before stores could hold them."""
    digest = hashlib.sha256()
    digest.update(row.model.encode("utf-8") + b"\0" + row.meta_json.encode("utf-8") + b"\0")
    for column in COLUMNS:
        values = np.ascontiguousarray(row.columns[column.name], column.stored)
        if column.since <= _CHECKSUM_FORMAT:
            digest.update(values.tobytes())
        elif (values != column.fill).any():
            digest.update(b"\0" + column.name.encode("utf-8") + b"\0" + values.tobytes())
    if row.token_logprobs is not None:
        digest.update(b"\0token_logprobs\0" + np.ascontiguousarray(row.token_logprobs, "<f4").tobytes())
    return "sha256:" + digest.hexdigest()


def settings_checksum(settings: dict) -> str:
    """sha256 over a store's settings (key order does not matter)."""
    canonical = json.dumps(settings, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return "sha256:" + hashlib.sha256(b"jaxmap-settings\0" + canonical).hexdigest()


class RowExistsError(StoreError):
    """The model (canonical key) has a row already, e.g. committed by another job meanwhile."""


@dataclass(frozen=True)
class Store:
    """An in-memory snapshot of a store's complete rows (matrix and journal)."""

    path: Path
    # Every per-text column (:data:`COLUMNS`) by name, K×N; the first three are also attributes.
    columns: Mapping[str, np.ndarray]
    models: list[str]
    model_meta: list[dict]
    text_ids: list[str]
    texts: list[str]
    text_bytes: np.ndarray
    text_fingerprint: str
    settings: dict
    row_checksums: list[str | None]
    # Per row: every scored token's log-prob (float32, texts in order), or None where the row
    # was scored without them.
    token_logprobs: list[np.ndarray | None] = field(default_factory=list)
    # Each text's context, or [] for a text set without contexts.
    contexts: list[str] = field(default_factory=list)
    # Each text's question fields (:data:`QUESTION_FIELDS`), or [] when no text has them.
    questions: list[dict] = field(default_factory=list)

    @property
    def loglik(self) -> np.ndarray:
        """K×N log-likelihoods in nats (the sum over each text's scored tokens)."""
        return self.columns["loglik"]

    @property
    def ntokens(self) -> np.ndarray:
        """K×N numbers of scored tokens (for a text with a context: its continuation's tokens)."""
        return self.columns["ntokens"]

    @property
    def continuation_tokens(self) -> np.ndarray:
        """K×N: each continuation's token count under the model's tokenizer, scored or not
        (recorded for text sets with contexts; 0 elsewhere)."""
        return self.columns["continuation_tokens"]

    @property
    def is_greedy(self) -> np.ndarray:
        """K×N: whether every scored token was the model's argmax (recorded for text sets with
        contexts; false elsewhere)."""
        return self.columns["is_greedy"]

    @property
    def truncated(self) -> np.ndarray:
        """K×N: whether the text was cut to the model's context."""
        return self.columns["truncated"]

    def text_token_logprobs(self, model: int, text: int) -> np.ndarray:
        """The scored tokens' log-probs of one text under one model (rows by index)."""
        values = self.token_logprobs[model] if self.token_logprobs else None
        if values is None:
            raise StoreError(f"{self.path}: {self.models[model]} was scored without --save-token-logprobs")
        start = int(self.ntokens[model, :text].sum())
        return values[start : start + int(self.ntokens[model, text])]

    @property
    def row_metadata(self) -> list[RowMetadata]:
        """Each row's metadata, typed (:class:`~jaxmap.row_metadata.RowMetadata`)."""
        return [RowMetadata.parse(model, meta) for model, meta in zip(self.models, self.model_meta)]

    @property
    def model_keys(self) -> list[str]:
        """The canonical key of each row (what resuming and merging match on)."""
        return [row.key for row in self.row_metadata]

    def find_row(self, name: str) -> int | None:
        """The row of the model ``name``, or None when the store has none. ``name`` is the
        row's name as listed, its canonical key, another spelling of a local model's path, or
        a hub id without the revision its row pins; a name that fits several rows is refused
        (:class:`StoreError`, naming them)."""
        return _find_row(self.row_metadata, name, self.path)

    @property
    def text_set(self) -> TextSet:
        """The scored texts as a :class:`TextSet`, with their contexts and question fields."""
        return TextSet(
            tuple(self.text_ids),
            tuple(self.texts),
            tuple(dict(q) for q in self.questions) if self.questions else tuple({} for _ in self.texts),
            source=str(self.path),
            contexts=tuple(self.contexts),
        )


def _find_row(rows: Sequence[RowMetadata], name: str, store: Path) -> int | None:
    """The one row of ``rows`` that ``name`` names (see :meth:`Store.find_row`), or None."""
    names = [row.name for row in rows]
    if name in names:
        return names.index(name)
    spelled = Path(name).expanduser()
    resolved = str(spelled.resolve()) if spelled.exists() else None
    # A logit-lens row's key extends its model's (``org/m@abc@layer3``): a hub id names the model.
    found = [
        i for i, row in enumerate(rows)
        if row.key in (name, resolved) or (not row.is_layer_row and row.key.startswith(f"{name}@"))
    ]
    if len(found) > 1:
        shown = ", ".join(rows[i].name for i in found[:3])
        raise StoreError(f"{store}: {name!r} names several rows ({shown}{' ...' if len(found) > 3 else ''})")
    return found[0] if found else None


def question_fields(texts: TextSet) -> list[dict]:
    """Each text's :data:`QUESTION_FIELDS` as the store keeps them, or [] when no text has a
    question id."""
    metadata = texts.metadata or tuple({} for _ in texts.texts)
    if not any("question_id" in meta for meta in metadata):
        return []
    return [{key: meta[key] for key in QUESTION_FIELDS if key in meta} for meta in metadata]


def _decode(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def store_file(path: str | Path) -> Path:
    """Where a store really is: ``~`` expanded and symbolic links followed (a path without
    links is kept as given). Its journal and locks sit beside this file, not beside a link to
    it, and rewrites replace this file, not the link."""
    path = Path(path).expanduser()
    real = Path(os.path.realpath(path))
    return path if real == Path(os.path.abspath(path)) else real


def journal_directory(path: Path) -> Path:
    """Where a store's uncompacted rows live."""
    path = store_file(path)
    return path.with_name(path.name + ".rows")


def _job_lock(path: Path) -> Path:
    return path.with_name(path.name + ".job.lock")


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class _Snapshot:
    """Everything a store holds, with the rows still unverified."""

    texts: TextSet
    text_bytes: np.ndarray
    settings: dict
    created_by: str
    format_version: int
    journal_sequence: int
    rows: list[Row]
    row_sources: list[str]
    # As stored: None in a store written before settings had a checksum.
    settings_checksum: str | None = None
    row_checksums_missing: bool = False


def _read_matrix(path: Path, handle: h5py.File, values: bool = True) -> tuple[_Snapshot, int]:
    if handle.attrs.get("format") != FORMAT:
        raise StoreError(f"{path}: not a jaxmap store (no format attribute {FORMAT!r})")
    version = int(handle.attrs.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format {version} is newer than this jaxmap reads ({FORMAT_VERSION}); "
            "upgrade jaxmap"
        )
    models = _decode(handle["models"][...])
    metas = _decode(handle["model_meta"][...])
    n_texts = int(handle.attrs["n_texts"])
    columns = _columns_of(version)
    # Format 1 had no checksums; a format 2 file without them was altered (see _store_problems).
    checksums_missing = "row_checksum" not in handle
    checksums = [None] * len(models) if checksums_missing else _decode(handle["row_checksum"][...])
    counts = {len(models), len(metas), len(checksums)} | {handle[column.name].shape[0] for column in columns}
    if len(counts) > 1:
        raise StoreError(f"{path}: datasets disagree on the number of rows; the file is damaged")
    # Without values: names and metadata only, what a commit needs to refuse a duplicate.
    stored = {c.name: handle[c.name][...].astype(c.dtype, copy=False) for c in columns} if values else {}
    tokens: list[np.ndarray | None] = [None] * len(models)
    if values and "token_offsets" in handle:
        offsets = handle["token_offsets"][...]
        everything = handle["token_logprob"]
        if offsets.shape[0] != len(models):
            raise StoreError(f"{path}: token_offsets disagree on the number of rows; the file is damaged")
        tokens = [None if row[0] < 0 else everything[row[0] : row[-1]] for row in offsets]
    rows = [
        Row(
            m, j, _filled({name: matrix[i] for name, matrix in stored.items()}, n_texts) if values else {},
            checksums[i], tokens[i],
        )
        for i, (m, j) in enumerate(zip(models, metas))
    ]
    questions = (
        [json.loads(q) for q in _decode(handle["questions"][...])] if "questions" in handle
        else [{} for _ in range(n_texts)]
    )
    texts = TextSet(
        tuple(_decode(handle["text_ids"][...])),
        tuple(_decode(handle["texts"][...])),
        tuple(questions),
        source=str(path),
        contexts=tuple(_decode(handle["contexts"][...])) if "contexts" in handle else (),
    )
    if texts.fingerprint != str(handle.attrs["text_fingerprint"]):
        raise StoreError(f"{path}: the stored texts do not match their fingerprint; the file is damaged")
    settings = json.loads(handle.attrs.get("settings", "{}"))
    if version == 1:
        settings = _infer_settings(rows)
    stored_settings_checksum = handle.attrs.get("settings_checksum")
    snapshot = _Snapshot(
        texts=texts,
        text_bytes=handle["text_bytes"][...],
        settings=settings,
        created_by=str(handle.attrs.get("created_by", "")),
        format_version=version,
        journal_sequence=int(handle.attrs.get("journal_sequence", 0)),
        rows=rows,
        row_sources=[f"row {i}" for i in range(len(rows))],
        settings_checksum=None if stored_settings_checksum is None else str(stored_settings_checksum),
        row_checksums_missing=checksums_missing,
    )
    return snapshot, len(texts)


def _store_problems(snapshot: _Snapshot) -> list[str]:
    """What is wrong with the store as a whole (not with one row): checksums that were removed
    and settings that were edited after jaxmap wrote them."""
    if snapshot.format_version < 2:
        return []
    problems = []
    if snapshot.row_checksums_missing:
        problems.append(
            "no /row_checksum dataset (format 2 always writes one), so no row can be verified; "
            "the file was altered after jaxmap wrote it"
        )
    shown = json.dumps(snapshot.settings, sort_keys=True)
    if snapshot.settings_checksum is not None:
        if snapshot.settings_checksum != settings_checksum(snapshot.settings):
            problems.append(
                f"the settings attribute {shown} does not match its checksum: it was edited "
                "after jaxmap wrote it, and rows under other settings are not comparable"
            )
        return problems
    # Written before settings had a checksum: the rows' own metadata, which their checksums
    # cover, is the evidence of what the settings were.
    for row in snapshot.rows:
        meta = row.meta
        for name in [n for n in SETTINGS if n in snapshot.settings]:
            value, recorded = snapshot.settings[name], meta.get(name, SETTING_DEFAULTS.get(name))
            if recorded is not None and recorded != value:
                problems.append(
                    f"the settings attribute {shown} says {name}={value!r}, but {row.model} was "
                    f"computed with {recorded!r}: the settings were edited after jaxmap wrote them"
                )
                return problems
    return problems


def _infer_settings(rows: list[Row]) -> dict:
    """Format 1 kept settings per row only; a store whose rows agree has them as its settings."""
    settings: dict = {}
    for name in SETTINGS:
        values = {row.meta.get(name) for row in rows} - {None}
        if len(values) == 1:
            settings[name] = values.pop()
    return settings


def _journal_entries(path: Path, after: int) -> list[tuple[int, Path]]:
    directory = journal_directory(path)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    entries = []
    for name in names:
        match = _ROW_NAME.match(name)
        if match and int(match.group(1)) > after:
            entries.append((int(match.group(1)), directory / name))
    return sorted(entries)


def _read_row_file(path: Path, n_texts: int, values: bool = True) -> Row:
    with open(path, "rb") as handle:
        head = handle.read(len(_ROW_MAGIC) + 8)
        header_length = int.from_bytes(head[len(_ROW_MAGIC) :], "little") if len(head) == len(_ROW_MAGIC) + 8 else 0
        data = head + (handle.read() if values else handle.read(min(header_length, 1 << 24)))
    where = f"{path}"
    if not data.startswith(_ROW_MAGIC) or len(data) < len(_ROW_MAGIC) + 8:
        raise StoreError(f"{where}: not a jaxmap row file; delete it and score that model again")
    offset = len(_ROW_MAGIC)
    header_length = int.from_bytes(data[offset : offset + 8], "little")
    offset += 8
    try:
        header = json.loads(data[offset : offset + header_length])
        model, meta_json, checksum = header["model"], header["meta"], header["checksum"]
        token_count = header.get("token_count")  # absent: a row without token log-probs
        # Which columns the file holds; absent: written before row files named their format,
        # whose columns are those of format 2.
        version = int(header.get("format", 2))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StoreError(f"{where}: unreadable row header; delete it and score that model again") from None
    offset += header_length
    if not values:
        return Row(model, meta_json, {}, checksum)
    columns = _columns_of(version)
    expected = n_texts * sum(np.dtype(column.stored).itemsize for column in columns) + 4 * (token_count or 0)
    if len(data) - offset != expected:
        raise StoreError(
            f"{where}: row of {model} holds {len(data) - offset} bytes of values, expected "
            f"{expected}; delete it and score that model again"
        )
    stored = {}
    for column in columns:
        stored[column.name] = np.frombuffer(data, column.stored, n_texts, offset).astype(column.dtype)
        offset += n_texts * np.dtype(column.stored).itemsize
    tokens = None if token_count is None else np.frombuffer(data, "<f4", token_count, offset).astype(np.float32)
    return Row(model, meta_json, _filled(stored, n_texts), checksum, tokens)


def _snapshot(path: Path, values: bool = True) -> _Snapshot:
    """Matrix plus journal as of one moment, retried if a compaction replaced the matrix meanwhile.

    ``values=False`` reads names and metadata only (cheap: no K×N arrays)."""
    path = store_file(path)
    for _ in range(20):
        if not path.exists():
            raise StoreError(f"{path}: no such store")
        try:
            handle = h5py.File(path, "r", locking=False)
        except OSError as error:
            raise StoreError(f"{path}: not a readable HDF5 file ({error})") from None
        try:
            with handle:
                opened = os.fstat(handle.id.get_vfd_handle()).st_ino
                snapshot, n_texts = _read_matrix(path, handle, values)
        except (OSError, KeyError, ValueError) as error:
            raise StoreError(f"{path}: the file is damaged ({error})") from None
        rows, sources = list(snapshot.rows), list(snapshot.row_sources)
        try:
            for sequence, row_path in _journal_entries(path, snapshot.journal_sequence):
                rows.append(_read_row_file(row_path, n_texts, values))
                sources.append(f"journal row {sequence}")
        except FileNotFoundError:
            continue  # folded into a new matrix while we read: read again
        try:
            unchanged = os.stat(path).st_ino == opened
        except FileNotFoundError:
            unchanged = False
        if unchanged:
            return replace(snapshot, rows=rows, row_sources=sources)
    raise StoreError(f"{path}: the store kept changing while it was read; try again")


def verify_rows(path: str | Path) -> list[tuple[str, str, str]]:
    """Check every row's checksum. Returns ``(where, model, problem)`` for each bad row.

    Rows written by format 1 (no checksums) are reported as unverifiable. Problems of the
    store as a whole (a removed checksum dataset, edited settings) come first, as
    ``("store", "", problem)``.
    """
    snapshot = _snapshot(Path(path))
    problems = [("store", "", problem) for problem in _store_problems(snapshot)]
    for where, row in zip(snapshot.row_sources, snapshot.rows):
        if row.checksum is None:
            if snapshot.format_version < 2:
                problems.append((where, row.model, "no checksum (written by store format 1)"))
        elif row_checksum(row) != row.checksum:
            problems.append((where, row.model, "checksum mismatch: the stored bytes are damaged"))
    return problems


def _verified(path: Path, snapshot: _Snapshot, rows: bool = True) -> _Snapshot:
    """``snapshot``, or a one-line error for the first problem of the store, or of a row
    (``rows``)."""
    problems = _store_problems(snapshot)
    if problems:
        raise StoreError(f"{path}: {problems[0]}. Restore the file from a copy or score into a new store")
    for where, row in zip(snapshot.row_sources, snapshot.rows) if rows else ():
        if row.checksum is not None and row_checksum(row) != row.checksum:
            raise StoreError(
                f"{path}: {where} ({row.model}) fails its checksum: the stored bytes are "
                f"damaged. Remove it with `jaxmap drop {path} {row.model}` and score it again"
            )
    return snapshot


def open_store(path: str | Path) -> Store:
    """Read every committed row of the store at ``path`` (matrix and journal), verified.

    Safe while another process writes the store. A row whose checksum fails is refused with an
    error naming it. A path that is a symbolic link is read where it points.
    """
    path = Path(path).expanduser()
    snapshot = _verified(store_file(path), _snapshot(path))
    rows = snapshot.rows
    n = len(snapshot.texts)
    return Store(
        path=path,
        columns={
            column.name: np.array([r.columns[column.name] for r in rows], column.dtype).reshape(len(rows), n)
            for column in COLUMNS
        },
        models=[r.model for r in rows],
        model_meta=[r.meta for r in rows],
        text_ids=list(snapshot.texts.ids),
        texts=list(snapshot.texts.texts),
        text_bytes=np.asarray(snapshot.text_bytes),
        text_fingerprint=snapshot.texts.fingerprint,
        settings=dict(snapshot.settings),
        row_checksums=[r.checksum for r in rows],
        token_logprobs=[r.token_logprobs for r in rows],
        contexts=list(snapshot.texts.contexts),
        questions=question_fields(snapshot.texts),
    )


def read_model_meta(path: str | Path) -> list[dict]:
    """Per-model metadata of a store."""
    return open_store(path).model_meta


# ---------------------------------------------------------------------------------------------
# Writing

# The settings that change the numbers: rows computed under different values do not compare.
SETTINGS = ("bos_policy", "dtype", "long_texts", "chat_template", "values")
# What rows written before a setting existed were computed with; the last two are recorded only
# where they differ from these, so that a store of plain log-likelihoods keeps its settings.
SETTING_DEFAULTS = {"long_texts": "truncate", "chat_template": "none", "values": "loglik"}


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _check_free_space(directory: Path, needed: int, what: str) -> None:
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    if free < needed + _SPACE_MARGIN:
        raise StoreError(
            f"{directory}: not enough free disk space to {what} (needs about "
            f"{(needed + _SPACE_MARGIN) / 1e6:.1f} MB, {free / 1e6:.1f} MB free); the store is unchanged"
        )


def _write_atomically(target: Path, data: bytes, what: str) -> None:
    """Write ``data`` to a temporary file beside ``target``, fsync, rename over ``target``.

    On any failure the temporary file is removed and ``target`` is as it was.
    """
    _check_free_space(target.parent, len(data), what)
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        _fsync_directory(target.parent)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(f"{target}: the disk is full; could not {what}; the store is unchanged") from None
        raise StoreError(f"{target}: could not {what} ({error.strerror or error}); the store is unchanged") from None


def _matrix_image(snapshot: _Snapshot, journal_sequence: int) -> bytes:
    """A whole store file, built in memory so HDF5 itself never meets a full disk."""
    texts, rows = snapshot.texts, snapshot.rows
    n, k = len(texts), len(rows)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle.attrs["format"] = FORMAT
        handle.attrs["format_version"] = FORMAT_VERSION
        handle.attrs["text_fingerprint"] = texts.fingerprint
        handle.attrs["n_texts"] = n
        handle.attrs["settings"] = json.dumps(snapshot.settings, sort_keys=True)
        handle.attrs["settings_checksum"] = settings_checksum(snapshot.settings)
        handle.attrs["created_by"] = snapshot.created_by
        handle.attrs["journal_sequence"] = journal_sequence
        handle.create_dataset("texts", data=list(texts.texts), dtype=_STRING)
        handle.create_dataset("text_ids", data=list(texts.ids), dtype=_STRING)
        handle.create_dataset("text_bytes", data=np.asarray(snapshot.text_bytes, np.int64))
        if texts.contexts:
            handle.create_dataset("contexts", data=list(texts.contexts), dtype=_STRING)
        questions = question_fields(texts)
        if questions:
            handle.create_dataset(
                "questions", data=[json.dumps(q, sort_keys=True) for q in questions], dtype=_STRING
            )
        chunks = (1, max(n, 1))
        for column in COLUMNS:
            data = np.array([r.columns[column.name] for r in rows], column.dtype).reshape(k, n)
            handle.create_dataset(column.name, data=data, maxshape=(None, n), chunks=chunks)
        checksums = [r.checksum or row_checksum(r) for r in rows]
        if any(r.token_logprobs is not None for r in rows):
            offsets = np.full((k, n + 1), -1, np.int64)
            start = 0
            for i, r in enumerate(rows):
                if r.token_logprobs is not None:
                    offsets[i] = start + np.concatenate([[0], np.cumsum(r.columns["ntokens"], dtype=np.int64)])
                    start = int(offsets[i, -1])
            kept = [r.token_logprobs for r in rows if r.token_logprobs is not None]
            handle.create_dataset("token_offsets", data=offsets)
            handle.create_dataset(
                "token_logprob", data=np.concatenate(kept).astype(np.float32), chunks=True, maxshape=(None,)
            )
        for name, values in (
            ("models", [r.model for r in rows]),
            ("model_meta", [r.meta_json for r in rows]),
            ("row_checksum", checksums),
        ):
            handle.create_dataset(name, data=values, dtype=_STRING, maxshape=(None,))
    return buffer.getvalue()


def _row_file_bytes(row: Row) -> bytes:
    fields = {"model": row.model, "meta": row.meta_json, "checksum": row.checksum, "format": FORMAT_VERSION}
    if row.token_logprobs is not None:
        fields["token_count"] = len(row.token_logprobs)
    header = json.dumps(fields, ensure_ascii=False).encode("utf-8")
    return b"".join(
        [
            _ROW_MAGIC,
            len(header).to_bytes(8, "little"),
            header,
            *(np.ascontiguousarray(row.columns[column.name], column.stored).tobytes() for column in COLUMNS),
            b"" if row.token_logprobs is None else np.ascontiguousarray(row.token_logprobs, "<f4").tobytes(),
        ]
    )


def _settings_difference(found: dict, wanted: dict) -> list[str]:
    differences = [
        f"{name}={found.get(name)!r} in the store, {wanted[name]!r} asked"
        for name in sorted(wanted)
        if name in found and found[name] != wanted[name]
    ]
    # A setting recorded only where it is not the default: a store that has it refuses rows
    # asked without it (at its default).
    for name in ("chat_template", "values"):
        if name in found and name not in wanted and found[name] != SETTING_DEFAULTS[name]:
            differences.append(f"{name}={found[name]!r} in the store, {SETTING_DEFAULTS[name]!r} asked")
    return differences


class StoreWriter:
    """Commits model rows to a store, each one atomically and in O(row).

    Opening creates the store for ``texts`` and ``settings`` if it does not exist. An existing
    store is refused, unchanged, when it was written for another text set or other settings,
    when its settings or checksums were altered, or when a row fails its checksum. ``path``
    may be a symbolic link: the store is written where it points (:func:`store_file`).
    Several writers, in one process or many, may write one store at once.
    """

    def __init__(
        self,
        path: str | Path,
        texts: TextSet,
        settings: dict | None = None,
        created_by: str = "",
        *,
        verify: bool = True,
    ) -> None:
        """``verify=False`` skips the rows' checksums on opening, so that damaged rows can be
        dropped (a store whose settings or checksums were altered is refused all the same)."""
        self.path = store_file(path)
        self.texts = texts
        self.settings = dict(settings or {})
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        with self._locked():
            if self.path.exists():
                snapshot = _verified(self.path, _snapshot(self.path), rows=verify)
                self._check_identity(snapshot)
                adopted = self._adopt_settings(snapshot)
                if snapshot.format_version < FORMAT_VERSION or adopted != snapshot.settings:
                    self._rewrite(replace(snapshot, settings=adopted))
            else:
                empty = _Snapshot(
                    texts, np.asarray(texts.byte_lengths, np.int64), self.settings, created_by,
                    FORMAT_VERSION, 0, [], [],
                )
                self._rewrite(empty)

    def _adopt_settings(self, snapshot: _Snapshot) -> dict:
        """The store's settings plus those of ours it did not record yet, if its rows agree."""
        adopted = dict(snapshot.settings)
        for name, value in self.settings.items():
            if name in adopted:
                continue
            disagreeing = [
                (r.model, r.meta.get(name, SETTING_DEFAULTS.get(name, value))) for r in snapshot.rows
                if r.meta.get(name, SETTING_DEFAULTS.get(name, value)) != value
            ]
            if disagreeing:
                named = ", ".join(f"{model} ({name}={held!r})" for model, held in disagreeing[:3])
                raise StoreMismatchError(
                    f"{self.path}: {named} computed with another {name} than the {value!r} "
                    "asked; rows under different settings are not comparable"
                )
            adopted[name] = value
        return adopted

    @contextmanager
    def job(self) -> Iterator[None]:
        """Mark the store as written by a job, for the job's length. Jobs share this lock, so
        several can write one store; :func:`merge` refuses a store while any job holds it,
        since it would take only the rows committed so far."""
        try:
            handle = open(_job_lock(self.path), "a")
        except OSError as error:
            raise StoreError(f"{self.path}: cannot write here ({error.strerror or error})") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            yield

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the writers' lock, for companions of the store (the run summary) that writers
        update one at a time."""
        with self._locked():
            yield

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a store file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self._lock_path, "a")
        except OSError as error:
            raise StoreError(f"{self.path}: cannot write here ({error.strerror or error})") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._remove_stale_temporaries()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _remove_stale_temporaries(self) -> None:
        # Left by a killed writer; safe to delete because we hold the lock.
        for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):
            stale.unlink(missing_ok=True)
        journal = journal_directory(self.path)
        if journal.is_dir():
            for stale in journal.glob(".*.tmp-*"):
                stale.unlink(missing_ok=True)

    def _check_identity(self, snapshot: _Snapshot) -> None:
        if snapshot.texts.fingerprint != self.texts.fingerprint:
            raise StoreMismatchError(
                f"{self.path}: written for another text set ({len(snapshot.texts)} texts, "
                f"fingerprint {snapshot.texts.fingerprint[:12]}); this one has {len(self.texts)} "
                f"texts, fingerprint {self.texts.fingerprint[:12]}. Use a new store path."
            )
        differences = _settings_difference(snapshot.settings, self.settings)
        if differences:
            raise StoreMismatchError(
                f"{self.path}: written with other settings ({'; '.join(differences)}); rows "
                "computed under different settings are not comparable. Use a new store path "
                "or the store's settings."
            )

    def _rewrite(self, snapshot: _Snapshot) -> None:
        """Write the whole matrix from ``snapshot`` (which includes the journal), then retire
        the journal rows it now holds."""
        sequence = max([snapshot.journal_sequence] + [s for s, _ in _journal_entries(self.path, 0)])
        _write_atomically(self.path, _matrix_image(snapshot, sequence), "write the store")
        for _, row_path in _journal_entries(self.path, 0):
            if int(row_path.stem) <= sequence:
                row_path.unlink(missing_ok=True)

    def _current(self) -> _Snapshot:
        return _verified(self.path, _snapshot(self.path))

    def completed_keys(self) -> list[str]:
        """Canonical keys of the models whose rows are committed, in store order."""
        return [row.key for row in _snapshot(self.path, values=False).rows]

    def append(
        self,
        model: str,
        loglik: np.ndarray,
        ntokens: np.ndarray,
        truncated: np.ndarray,
        meta: dict,
        token_logprobs: np.ndarray | None = None,
        **other_columns: np.ndarray,
    ) -> None:
        """Commit one model's row. ``meta["key"]``, if given, is the model's canonical key.
        ``token_logprobs`` (float32, every scored token's log-prob, texts in order: ``ntokens``
        of them per text) is committed with the row, in the same file and checksum.
        ``other_columns`` are the row's values of the :data:`COLUMNS` after the first three, by
        name; a column not given holds its fill.

        Refuses a row of the wrong length, with non-finite values, or for a model (key) that
        already has one (:class:`RowExistsError`: another writer may have committed it since
        this one opened); the store is then unchanged.
        """
        n = len(self.texts)
        given = {"loglik": loglik, "ntokens": ntokens, "truncated": truncated, **other_columns}
        unknown = sorted(set(given) - {column.name for column in COLUMNS})
        if unknown:
            raise StoreError(f"{self.path}: a store has no per-text column {', '.join(unknown)}")
        if any(np.shape(values) != (n,) for values in given.values()):
            raise StoreError(f"{self.path}: row for {model} does not have {n} entries")
        columns = _filled({c.name: np.asarray(given[c.name], c.dtype) for c in COLUMNS if c.name in given}, n)
        bad = np.flatnonzero(~np.isfinite(columns["loglik"]))
        if bad.size:
            ids = ", ".join(self.texts.ids[i] for i in bad[:3])
            raise StoreError(
                f"{self.path}: row for {model} has {bad.size} non-finite value(s) (texts {ids}"
                f"{' ...' if bad.size > 3 else ''}); not committed"
            )
        meta = {**meta, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        meta_json = json.dumps(meta, sort_keys=True, ensure_ascii=False)
        if token_logprobs is not None:
            token_logprobs = np.asarray(token_logprobs, np.float32)
            scored = int(columns["ntokens"].sum())
            if token_logprobs.shape != (scored,):
                raise StoreError(
                    f"{self.path}: row for {model} has {token_logprobs.size} token log-probs for "
                    f"{scored} scored tokens; not committed"
                )
            if not np.isfinite(token_logprobs).all():
                raise StoreError(f"{self.path}: row for {model} has non-finite token log-probs; not committed")
        unsigned = Row(model, meta_json, columns, None, token_logprobs)
        row = replace(unsigned, checksum=row_checksum(unsigned))
        with self._locked():
            snapshot = _snapshot(self.path, values=False)
            if row.key in {r.key for r in snapshot.rows}:
                raise RowExistsError(f"{self.path}: {model} already has a row")
            entries = _journal_entries(self.path, 0)
            sequence = max([snapshot.journal_sequence] + [s for s, _ in entries]) + 1
            journal = journal_directory(self.path)
            try:
                journal.mkdir(exist_ok=True)
            except OSError as error:
                raise StoreError(f"{journal}: cannot create the journal ({error.strerror or error})") from None
            _write_atomically(journal / f"{sequence:012d}.row", _row_file_bytes(row), f"commit the row of {model}")
            journal_rows = len(_journal_entries(self.path, snapshot.journal_sequence))
            if journal_rows > max(_COMPACT_AFTER_ROWS, len(snapshot.rows) + 1 - journal_rows):
                self._compact_quietly()

    def _compact_quietly(self) -> None:
        # The row is committed in the journal already: a compaction that fails (full disk)
        # only postpones folding it into the matrix.
        try:
            self._rewrite(self._current())
        except StoreError:
            pass

    def compact(self) -> None:
        """Fold the journal into the matrix (one atomic rewrite), so plain HDF5 readers see
        every row. Raises :class:`StoreError` (store unchanged, rows still readable) on failure."""
        with self._locked():
            if _journal_entries(self.path, 0):
                self._rewrite(self._current())

    def drop(self, models: Iterable[str]) -> list[str]:
        """Remove the rows of ``models``, each found as :meth:`Store.find_row` finds a row (by
        name, canonical key, resolved path, or a hub id without its revision).

        One atomic rewrite: a kill at any moment leaves either every row or none of them
        removed. Returns the names of the rows removed. Damaged rows can be dropped.
        """
        wanted = list(models)
        with self._locked():
            snapshot = _snapshot(self.path)
            metadata = [row.metadata for row in snapshot.rows]
            found = [_find_row(metadata, name, self.path) for name in wanted]
            unknown = [name for name, index in zip(wanted, found) if index is None]
            if unknown:
                raise StoreError(
                    f"{self.path}: no row for {', '.join(unknown)} (the store holds "
                    f"{', '.join(r.model for r in snapshot.rows) or 'no rows'})"
                )
            removed = sorted(set(found))
            kept = [r for i, r in enumerate(snapshot.rows) if i not in set(removed)]
            self._rewrite(replace(snapshot, rows=kept, row_sources=[]))
            return [snapshot.rows[i].model for i in removed]


def drop(path: str | Path, models: Iterable[str]) -> list[str]:
    """Remove the rows of ``models`` from the store at ``path``, crash-safely (see
    :meth:`StoreWriter.drop`). Returns the names of the removed rows."""
    path = store_file(path)
    snapshot = _snapshot(path)
    return StoreWriter(path, snapshot.texts, snapshot.settings, verify=False).drop(models)


def compact(path: str | Path) -> None:
    """Fold a store's journal into its matrix (see :meth:`StoreWriter.compact`)."""
    path = store_file(path)
    snapshot = _snapshot(path)
    StoreWriter(path, snapshot.texts, snapshot.settings).compact()


def merge(paths: Sequence[str | Path], out: str | Path) -> Store:
    """Join stores of one text set and settings into ``out`` (created, or extended if it exists).

    Refuses, leaving ``out`` unchanged, stores with another text set or other settings, the
    same model (canonical key) in two stores, ``out`` among the inputs, damaged rows, and a
    store that a running job writes (merging it now would take only the rows committed so far;
    merge it once the job has finished). Paths may be symbolic links (:func:`store_file`).
    """
    out = store_file(out)
    paths = [store_file(p) for p in paths]
    if not paths:
        raise StoreError("merge needs at least one store")
    for path in paths:
        if out.exists() and path.exists() and os.path.samefile(path, out):
            raise StoreError(
                f"{out}: is also one of the stores to merge; name a new --out (an existing "
                "--out is extended with the inputs' rows)"
            )
    with ExitStack() as held:
        for path in dict.fromkeys(paths):  # a part named twice is refused below, by its rows
            _hold_against_jobs(path, held)
        return _merge(paths, out)


def _hold_against_jobs(path: Path, held: ExitStack) -> None:
    """Take the job lock of ``path`` exclusively until ``held`` closes (a job starting meanwhile
    waits), or refuse at once if a running job holds it."""
    try:
        handle = held.enter_context(open(_job_lock(path), "r"))
    except FileNotFoundError:
        return  # no job has written this store
    except OSError as error:
        raise StoreError(f"{path}: cannot read its job lock ({error.strerror or error})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StoreError(
            f"{path}: a scoring job is still writing it (it holds {_job_lock(path).name}); merge "
            "it once that job has finished"
        ) from None


def _merge(paths: list[Path], out: Path) -> Store:
    snapshots = [(p, _verified(p, _snapshot(p))) for p in paths]
    first_path, first = snapshots[0]
    rows: list[Row] = []
    owner: dict[str, Path] = {}
    for path, snapshot in snapshots:
        if snapshot.texts.fingerprint != first.texts.fingerprint:
            raise StoreMismatchError(
                f"{path}: written for another text set than {first_path} (fingerprint "
                f"{snapshot.texts.fingerprint[:12]} vs {first.texts.fingerprint[:12]})"
            )
        differences = _settings_difference(snapshot.settings, first.settings)
        if differences:
            raise StoreMismatchError(f"{path}: other settings than {first_path} ({'; '.join(differences)})")
        for row in snapshot.rows:
            if row.key in owner:
                raise StoreError(f"{row.model} has a row in both {owner[row.key]} and {path}")
            owner[row.key] = path
            rows.append(row)
    writer = StoreWriter(out, first.texts, first.settings, created_by=first.created_by)
    with writer._locked():
        current = writer._current()
        for row in current.rows:
            if row.key in owner:
                raise StoreError(f"{row.model} has a row in both {out} and {owner[row.key]}")
        writer._rewrite(replace(current, rows=current.rows + rows, row_sources=[]))
    return open_store(out)
