"""The subset file: the resampled texts of a map, for scoring new models on them alone.

Format (JSONL, one selected text per line, readable by :func:`jaxmap.texts.load_texts`)::

    {"id": "t0042", "text": "...", "column": 42, "scale": 1.7320508,
     "map": {"format": "jaxmap-subset", "version": 1, "tau": -1234.5, "draws": 500,
             "n_texts": 10000, "n_models": 812, "method": "ls", "seed": 0,
             "clip_quantile": 0.02, "text_fingerprint": "9f2c...", "source": "map.h5"}}

``column`` is the text's position in the map's text set and ``scale`` its column scale
``sqrt(c)/sqrt(n·π)``. ``map`` is the same on every line (repeated, so that the file stays a
plain text set with no header line): the clipping threshold ``tau``, the number of draws n,
the map's N texts and K models, the sampling method and seed, the clip quantile that gave
``tau``, the fingerprint of the map's text set (null for a plain matrix) and the map file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..texts import TextSet, TextSetError, load_texts
from ._arrays import AnalysisError

SUBSET_FORMAT = "jaxmap-subset"
SUBSET_VERSION = 1


@dataclass(frozen=True)
class MapInfo:
    """What a subset needs to know about the map it was drawn from."""

    tau: float
    draws: int
    n_texts: int
    n_models: int
    method: str
    seed: int
    clip_quantile: float
    text_fingerprint: str | None
    source: str


@dataclass(frozen=True)
class Subset:
    """A subset file read back: the texts to score, their map columns and scales."""

    path: Path
    texts: TextSet
    columns: np.ndarray
    scales: np.ndarray
    map: MapInfo


def write_subset(
    path: str | Path,
    text_ids: Sequence[str],
    texts: Sequence[str],
    indices: np.ndarray,
    scales: np.ndarray,
    info: MapInfo,
    contexts: Sequence[str] | None = None,
) -> None:
    """Write the selected texts (``indices`` into the map's ``texts``, with their ``contexts``
    where the map's texts have them) with their scales, atomically (see :mod:`jaxmap.outputs`)."""
    header = {"format": SUBSET_FORMAT, "version": SUBSET_VERSION, **asdict(info)}
    selected = TextSet(
        tuple(text_ids[i] for i in indices),
        tuple(texts[i] for i in indices),
        tuple(
            {"column": int(i), "scale": float(s), "map": header} for i, s in zip(indices, scales)
        ),
        contexts=tuple(contexts[i] for i in indices) if contexts else (),
    )
    selected.to_jsonl(path)


def read_subset(path: str | Path) -> Subset:
    """Read a subset file; errors name the file and the entry."""
    path = Path(path)
    try:
        loaded = load_texts(path)
    except TextSetError as error:
        raise AnalysisError(str(error)) from None
    columns, scales = [], []
    header = None
    for entry, meta in enumerate(loaded.metadata, start=1):
        where = f"{path}: entry {entry} (id {loaded.ids[entry - 1]!r})"
        column, scale = meta.get("column"), meta.get("scale")
        if not isinstance(column, int) or column < 0:
            raise AnalysisError(f"{where}: 'column' must be a non-negative integer, got {column!r}")
        if not isinstance(scale, (int, float)) or not np.isfinite(scale) or scale <= 0:
            raise AnalysisError(f"{where}: 'scale' must be a positive number, got {scale!r}")
        if header is None:
            header = meta.get("map")
            if not isinstance(header, dict) or header.get("format") != SUBSET_FORMAT:
                raise AnalysisError(
                    f"{where}: no 'map' object of format {SUBSET_FORMAT!r}; not a subset file"
                )
            if header.get("version") != SUBSET_VERSION:
                raise AnalysisError(
                    f"{where}: subset version {header.get('version')!r}, expected {SUBSET_VERSION}"
                )
        elif meta.get("map") != header:
            raise AnalysisError(f"{where}: its 'map' object differs from the first entry's")
        columns.append(column)
        scales.append(float(scale))
    if len(set(columns)) != len(columns):
        raise AnalysisError(f"{path}: a column appears twice")
    fields = {key: header[key] for key in MapInfo.__dataclass_fields__ if key in header}
    missing = set(MapInfo.__dataclass_fields__) - set(fields)
    if missing:
        raise AnalysisError(f"{path}: the 'map' object lacks {', '.join(sorted(missing))}")
    info = MapInfo(**fields)
    if max(columns) >= info.n_texts:
        raise AnalysisError(
            f"{path}: column {max(columns)} is outside the map's {info.n_texts} texts"
        )
    plain = TextSet(
        loaded.ids, loaded.texts, tuple({} for _ in loaded.ids), source=str(path), contexts=loaded.contexts
    )
    return Subset(
        path=path,
        texts=plain,
        columns=np.asarray(columns, np.int64),
        scales=np.asarray(scales, np.float64),
        map=info,
    )
