"""What the analysis reads: a log-likelihood matrix from a store, a ``.npy`` file or a plain
HDF5 matrix; a CSV table with one row per model; and the models' metadata shown on a map."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from ..errors import AnalysisError, InputError
from ..store import FORMAT as STORE_FORMAT
from ..store import StoreError, open_store, read_model_meta


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
    # A store's contexts ([] for a text set without) and its scoring settings.
    contexts: list[str] | None = None
    settings: dict | None = None

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

    def require_text_bytes(self) -> np.ndarray:
        """The UTF-8 length of each text, which bits per byte needs; raises
        :class:`~jaxmap.errors.AnalysisError` naming the file when the matrix does not know
        them (only a jaxmap store does)."""
        if self.text_bytes is None:
            raise AnalysisError(
                f"{self.source}: bits per byte needs the texts' byte lengths, "
                "which only a jaxmap store has"
            )
        return self.text_bytes


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
        contexts=list(store.contexts),
        settings=dict(store.settings),
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


def read_model_table(
    path: str | Path, needed: Sequence[str] = ()
) -> tuple[str, dict[str, dict[str, str]]]:
    """The rows of a CSV file by model name, and the name column ("model" if present, else the
    first). A UTF-8 byte-order mark (as spreadsheets write) is accepted; a model named on two
    rows is refused, naming both lines, and so is a file without the columns ``needed``."""
    path = Path(path)
    if path.is_dir():
        raise AnalysisError(f"{path}: is a directory, not a CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [(reader.line_num, row) for row in reader]
            columns = reader.fieldnames or []
    except FileNotFoundError:
        raise AnalysisError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise AnalysisError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise AnalysisError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None
    except OSError as error:
        raise AnalysisError(f"{path}: cannot read ({error.strerror or error})") from None
    if not columns or not rows:
        raise AnalysisError(f"{path}: no header or no rows")
    for column in needed:
        if column not in columns:
            raise AnalysisError(f"{path}: no column {column!r} (columns: {', '.join(columns)})")
    key = "model" if "model" in columns else columns[0]
    by_name: dict[str, dict[str, str]] = {}
    line_of: dict[str, int] = {}
    for line, row in rows:
        name = row[key]
        if name in by_name:
            raise AnalysisError(f"{path}:{line}: model {name!r} has a second row (first on line {line_of[name]})")
        by_name[name], line_of[name] = row, line
    return key, by_name


# Store metadata that says how a row was computed, not what the model is; kept out of the
# hover text of the map so that what tells models apart stays readable.
_RUN_STATISTICS = (
    "seconds", "tokens", "tokens_per_second", "padding_fraction", "batch_shapes", "compilations",
    "compile_seconds", "load_seconds", "jaxmap_version", "tokenizer",
)


def map_metadata(
    matrix: LoglikMatrix, table: str | Path | None = None, color_by: str | None = None
) -> list[dict]:
    """One metadata row per model of ``matrix``: what its store records about the model, then
    the columns of the CSV ``table`` (:func:`read_model_table`), which must name at least one
    of the models and must have the column ``color_by`` unless the store records it. A note on
    stderr counts the models without a row in the table."""
    rows: list[dict] = [{} for _ in matrix.models]
    if matrix.is_store:
        rows = [
            {k: v for k, v in meta.items() if k not in _RUN_STATISTICS}
            for meta in read_model_meta(matrix.source)
        ]
    if table:
        in_store = any(color_by in row for row in rows) if color_by else True
        key, by_name = read_model_table(table, [] if in_store else [color_by])
        found = [by_name.get(model) for model in matrix.models]
        if all(row is None for row in found):
            raise AnalysisError(
                f"{table}: none of its {key!r} values names a model of the map "
                f"(e.g. {next(iter(by_name))!r} vs {matrix.models[0]!r})"
            )
        missing = sum(row is None for row in found)
        if missing:
            print(f"note: {missing} of {len(matrix.models)} models have no row in {table}", file=sys.stderr)
        for row, extra in zip(rows, found):
            row.update({k: v for k, v in (extra or {}).items() if k != key})
    return rows
