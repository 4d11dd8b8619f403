"""The HDF5 store: one row of per-text log-likelihoods per model.

Layout (readable with plain h5py)::

    /texts        [N] utf-8 strings   the text set, in order
    /text_ids     [N] utf-8 strings
    /text_bytes   [N] int64           UTF-8 length of each text
    /loglik       [K, N] float64      log-likelihood in nats (sum over scored tokens)
    /ntokens      [K, N] int32        number of scored tokens
    /truncated    [K, N] bool         text was cut to the model's context
    /models       [K] utf-8 strings   model references as given
    /model_meta   [K] utf-8 strings   JSON per model: resolved revision, architecture, dtype, ...
    attrs: format, format_version, text_fingerprint, n_texts, created_by

Crash safety: the live file is never modified in place. A row is committed by copying the
file, appending to the copy, fsyncing it and renaming it over the live path (an atomic
``rename``). A SIGKILL at any moment leaves either the old or the new file, both complete;
readers that opened the old file keep a consistent view. Writers serialise on ``<store>.lock``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .texts import TextSet
from .errors import StoreError, StoreMismatchError

FORMAT = "jaxmap-store"
FORMAT_VERSION = 1
_STRING = h5py.string_dtype("utf-8")



@dataclass(frozen=True)
class Store:
    """An in-memory snapshot of a store's complete rows."""

    path: Path
    loglik: np.ndarray
    ntokens: np.ndarray
    truncated: np.ndarray
    models: list[str]
    model_meta: list[dict]
    text_ids: list[str]
    texts: list[str]
    text_bytes: np.ndarray
    text_fingerprint: str

    @property
    def text_set(self) -> TextSet:
        """The scored texts as a :class:`TextSet`."""
        return TextSet(
            tuple(self.text_ids),
            tuple(self.texts),
            tuple({} for _ in self.texts),
            source=str(self.path),
        )


def _decode(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def open_store(path: str | Path) -> Store:
    """Read every complete row of the store at ``path``.

    Safe while another process writes the store: the writer replaces the file atomically, so
    this sees the rows committed at the moment it opened the file.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store")
    try:
        handle = h5py.File(path, "r", locking=False)
    except OSError as error:
        raise StoreError(f"{path}: not a readable HDF5 file ({error})") from None
    with handle:
        if handle.attrs.get("format") != FORMAT:
            raise StoreError(f"{path}: not a jaxmap store (no format attribute {FORMAT!r})")
        return Store(
            path=path,
            loglik=handle["loglik"][...].astype(np.float64),
            ntokens=handle["ntokens"][...],
            truncated=handle["truncated"][...].astype(bool),
            models=_decode(handle["models"][...]),
            model_meta=[json.loads(m) for m in _decode(handle["model_meta"][...])],
            text_ids=_decode(handle["text_ids"][...]),
            texts=_decode(handle["texts"][...]),
            text_bytes=handle["text_bytes"][...],
            text_fingerprint=str(handle.attrs["text_fingerprint"]),
        )


def read_model_meta(path: str | Path) -> list[dict]:
    """Per-model metadata of a store, without reading its matrices."""
    with h5py.File(path, "r", locking=False) as handle:
        return [json.loads(m) for m in _decode(handle["model_meta"][...])]


def _fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class StoreWriter:
    """Appends model rows to a store, committing each row atomically.

    Opening creates the store for ``texts`` if it does not exist; an existing store written for
    another text set is refused and left unchanged.
    """

    def __init__(self, path: str | Path, texts: TextSet, created_by: str = "") -> None:
        self.path = Path(path)
        self.texts = texts
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        with self._locked():
            if self.path.exists():
                self._check_text_set()
            else:
                self._create(created_by)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._remove_stale_copies()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _remove_stale_copies(self) -> None:
        # Copies left by a killed writer; safe to delete because we hold the lock.
        for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):
            stale.unlink(missing_ok=True)

    def _check_text_set(self) -> None:
        try:
            with h5py.File(self.path, "r", locking=False) as handle:
                if handle.attrs.get("format") != FORMAT:
                    raise StoreError(f"{self.path}: exists and is not a jaxmap store")
                found = str(handle.attrs["text_fingerprint"])
                n_found = int(handle.attrs["n_texts"])
        except OSError as error:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({error})") from None
        if found != self.texts.fingerprint:
            raise StoreError(
                f"{self.path}: written for another text set ({n_found} texts, fingerprint "
                f"{found[:12]}); this one has {len(self.texts)} texts, fingerprint "
                f"{self.texts.fingerprint[:12]}. Use a new store path."
            )

    def _commit(self, write) -> None:
        """Copy the live file (if any), let ``write`` change the copy, then rename it over."""
        temporary = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        if self.path.exists():
            shutil.copyfile(self.path, temporary)
        with h5py.File(temporary, "a", locking=False) as handle:
            write(handle)
        _fsync_path(temporary)
        os.replace(temporary, self.path)
        _fsync_path(self.path.parent)

    def _create(self, created_by: str) -> None:
        texts = self.texts
        n = len(texts)

        def write(handle: h5py.File) -> None:
            handle.attrs["format"] = FORMAT
            handle.attrs["format_version"] = FORMAT_VERSION
            handle.attrs["text_fingerprint"] = texts.fingerprint
            handle.attrs["n_texts"] = n
            handle.attrs["created_by"] = created_by
            handle.create_dataset("texts", data=list(texts.texts), dtype=_STRING)
            handle.create_dataset("text_ids", data=list(texts.ids), dtype=_STRING)
            handle.create_dataset("text_bytes", data=np.asarray(texts.byte_lengths, np.int64))
            row_chunks = (1, max(n, 1))
            for name, dtype in (("loglik", np.float64), ("ntokens", np.int32), ("truncated", bool)):
                handle.create_dataset(
                    name, shape=(0, n), maxshape=(None, n), dtype=dtype, chunks=row_chunks
                )
            for name in ("models", "model_meta"):
                handle.create_dataset(name, shape=(0,), maxshape=(None,), dtype=_STRING)

        self._commit(write)

    def completed_models(self) -> list[str]:
        """References of the models whose rows are committed, in store order."""
        with h5py.File(self.path, "r", locking=False) as handle:
            return _decode(handle["models"][...])

    def append(
        self,
        model: str,
        loglik: np.ndarray,
        ntokens: np.ndarray,
        truncated: np.ndarray,
        meta: dict,
    ) -> None:
        """Commit one model's row. Raises if the row has the wrong length."""
        n = len(self.texts)
        loglik = np.asarray(loglik, np.float64)
        if loglik.shape != (n,) or np.shape(ntokens) != (n,) or np.shape(truncated) != (n,):
            raise StoreError(f"{self.path}: row for {model} does not have {n} entries")
        meta = {**meta, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

        def write(handle: h5py.File) -> None:
            k = handle["models"].shape[0]
            for name, row in (("loglik", loglik), ("ntokens", ntokens), ("truncated", truncated)):
                handle[name].resize(k + 1, axis=0)
                handle[name][k] = row
            for name, value in (("models", model), ("model_meta", json.dumps(meta))):
                handle[name].resize(k + 1, axis=0)
                handle[name][k] = value

        with self._locked():
            if model in self.completed_models():
                raise StoreError(f"{self.path}: {model} already has a row")
            self._commit(write)
