"""Reading a log-likelihood matrix from a store, a ``.npy`` file or a plain HDF5 matrix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError
from ..store import FORMAT as STORE_FORMAT
from ..store import StoreError, open_store


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
    if np.isposinf(matrix).any():
        rows = np.flatnonzero(np.isposinf(matrix).any(axis=1))
        raise InputError(
            f"{path}: +inf log-likelihoods (probabilities above 1) in {len(rows)} rows (first: row {rows[0]})"
        )
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


_NPY_SIGNATURE = b"\x93NUMPY"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _load_npy(path: Path, signature: bytes) -> LoglikMatrix:
    if not signature.startswith(_NPY_SIGNATURE):
        raise InputError(f"{path}: not a .npy file ({'it is empty' if not signature else 'no NumPy header'})")
    try:
        matrix = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error):
            raise InputError(f"{path}: holds Python objects, not numbers; save a numeric matrix") from None
        raise InputError(f"{path}: a damaged .npy file ({error})") from None
    except (OSError, EOFError) as error:
        raise InputError(f"{path}: a damaged or truncated .npy file ({error})") from None
    loglik = _checked(path, matrix)
    return LoglikMatrix(source=path, loglik=loglik, models=_default_names(loglik.shape[0]))


def _load_h5(path: Path, signature: bytes) -> LoglikMatrix:
    try:
        handle = h5py.File(path, "r", locking=False)
    except OSError as error:
        # HDF5 may start after a user block, so only a failed open proves it is not HDF5.
        if signature != _HDF5_SIGNATURE:
            raise InputError(f"{path}: not an HDF5 file{' (it is empty)' if not signature else ''}") from None
        raise InputError(f"{path}: a damaged HDF5 file ({error})") from None
    with handle:
        if handle.attrs.get("format") != STORE_FORMAT:
            try:
                return _load_plain_h5(path, handle)
            except InputError:
                raise
            except (OSError, ValueError, TypeError) as error:
                raise InputError(f"{path}: cannot read its matrix ({error})") from None
    try:
        store = open_store(path)
    except StoreError as error:
        raise InputError(str(error)) from None
    if len(store.models) < 2:
        raise InputError(f"{path}: the store has {len(store.models)} models; a map needs at least 2")
    return LoglikMatrix(
        source=path,
        loglik=_checked(path, store.loglik),
        models=list(store.models),
        text_ids=list(store.text_ids),
        texts=list(store.texts),
        text_bytes=np.asarray(store.text_bytes),
        text_fingerprint=store.text_fingerprint,
    )


def load_loglik(path: str | Path) -> LoglikMatrix:
    """Read a jaxmap store, a ``.npy`` matrix, or an HDF5 file holding a plain matrix.

    For HDF5 that is not a store the matrix is the dataset ``loglik``, else the file's only 2-D
    dataset. Pickles are not read: loading one can run arbitrary code (convert with
    ``np.save``). Errors (:class:`~jaxmap.errors.InputError`) name the file and say what is
    wrong: missing, a directory, unreadable, empty, another format, damaged, or not a matrix
    of numbers.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a matrix file")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".h5", ".hdf5"):
        raise InputError(
            f"{path}: unsupported file type {suffix or '(none)'}; expected a store (.h5), .npy or .hdf5"
        )
    try:
        with open(path, "rb") as handle:
            signature = handle.read(8)
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
    return _load_npy(path, signature) if suffix == ".npy" else _load_h5(path, signature)
