"""Reading a log-likelihood matrix from a store, a ``.npy`` file or a plain HDF5 matrix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..store import FORMAT as STORE_FORMAT
from ..store import StoreError, open_store
from ._arrays import AnalysisError
from ..errors import InputError



@dataclass(frozen=True)
class LoglikMatrix:
    """A K×N log-likelihood matrix with whatever a file tells about its rows and columns.

    ``texts``, ``text_ids``, ``text_bytes`` and ``text_fingerprint`` are known only for a
    jaxmap store; plain matrices name their models ``model_0``, ``model_1``, ... unless the
    HDF5 file has a ``models`` dataset.
    """

    source: Path
    loglik: np.ndarray
    models: list[str]
    text_ids: list[str] | None = None
    texts: list[str] | None = None
    text_bytes: np.ndarray | None = None
    text_fingerprint: str | None = None

    @property
    def is_store(self) -> bool:
        """Whether the matrix came from a jaxmap store (and so knows its texts)."""
        return self.texts is not None

    def model_index(self, name: str) -> int:
        """The row of model ``name``; the error lists a few close names."""
        try:
            return self.models.index(name)
        except ValueError:
            import difflib

            close = difflib.get_close_matches(name, self.models, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise InputError(f"{self.source}: no model named {name!r}{hint}") from None


def _default_names(count: int) -> list[str]:
    return [f"model_{i}" for i in range(count)]


def _checked(path: Path, matrix) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise InputError(
            f"{path}: expected a 2-D matrix (models × texts), got shape {matrix.shape}"
        )
    if not (np.issubdtype(matrix.dtype, np.floating) or np.issubdtype(matrix.dtype, np.integer)):
        raise InputError(f"{path}: expected numbers, got dtype {matrix.dtype}")
    if matrix.shape[0] < 2 or matrix.shape[1] < 2:
        raise InputError(f"{path}: need at least 2 models and 2 texts, got shape {matrix.shape}")
    matrix = matrix.astype(np.float64, copy=False)
    if np.isnan(matrix).any():
        rows = np.flatnonzero(np.isnan(matrix).any(axis=1))
        raise InputError(f"{path}: NaN log-likelihoods in {len(rows)} rows (first: row {rows[0]})")
    return matrix


def _load_plain_h5(path: Path, handle: h5py.File) -> LoglikMatrix:
    if "loglik" in handle and isinstance(handle["loglik"], h5py.Dataset):
        name = "loglik"
    else:
        matrices: list[str] = []

        def collect(key: str, item) -> None:
            if isinstance(item, h5py.Dataset) and item.ndim == 2:
                matrices.append(key)

        handle.visititems(collect)
        if len(matrices) != 1:
            found = ", ".join(matrices) if matrices else "none"
            raise InputError(
                f"{path}: no 'loglik' dataset and not exactly one 2-D dataset (found: {found})"
            )
        name = matrices[0]
    loglik = _checked(path, handle[name][...])
    models = _default_names(loglik.shape[0])
    if "models" in handle and isinstance(handle["models"], h5py.Dataset):
        stored = [
            m.decode("utf-8") if isinstance(m, bytes) else str(m) for m in handle["models"][...]
        ]
        if len(stored) != loglik.shape[0]:
            raise InputError(f"{path}: {len(stored)} model names for {loglik.shape[0]} rows")
        models = stored
    return LoglikMatrix(source=path, loglik=loglik, models=models)


def load_loglik(path: str | Path) -> LoglikMatrix:
    """Read a jaxmap store, a ``.npy`` matrix, or an HDF5 file holding a plain matrix.

    For HDF5 that is not a store the matrix is the dataset ``loglik``, else the file's only 2-D
    dataset. Pickles are not read: loading one can run arbitrary code (convert with
    ``np.save``). Errors name the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            matrix = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise InputError(f"{path}: not a readable .npy matrix ({error})") from None
        loglik = _checked(path, matrix)
        return LoglikMatrix(source=path, loglik=loglik, models=_default_names(loglik.shape[0]))
    if suffix in (".h5", ".hdf5"):
        try:
            handle = h5py.File(path, "r", locking=False)
        except OSError as error:
            raise InputError(f"{path}: not a readable HDF5 file ({error})") from None
        with handle:
            is_store = handle.attrs.get("format") == STORE_FORMAT
            if not is_store:
                return _load_plain_h5(path, handle)
        try:
            store = open_store(path)
        except StoreError as error:
            raise InputError(str(error)) from None
        if len(store.models) < 2:
            raise InputError(
                f"{path}: the store has {len(store.models)} models; a map needs at least 2"
            )
        return LoglikMatrix(
            source=path,
            loglik=_checked(path, store.loglik),
            models=list(store.models),
            text_ids=list(store.text_ids),
            texts=list(store.texts),
            text_bytes=np.asarray(store.text_bytes),
            text_fingerprint=store.text_fingerprint,
        )
    raise InputError(
        f"{path}: unsupported file type {suffix or '(none)'}; expected a store (.h5), .npy or .hdf5"
    )
