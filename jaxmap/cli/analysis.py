"""What the analysis commands share: the STORE argument and its clipping, the output checks,
and the way results are written and printed.

The commands themselves live by family: :mod:`.distances` (kl, tree), :mod:`.maps` (map,
uncertainty), :mod:`.subsets` (resample, add) and :mod:`.interpreting` (predict, outliers,
ica). Each reads a jaxmap store (or a ``.npy`` / plain HDF5 matrix), clips it at the global
``--clip-quantile`` (0.02, as in the papers; 0 disables) and reports for people: results on
stdout, a one-line error naming the file or model on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..analysis import AnalysisError, LoglikMatrix, clip, load_loglik
from ..outputs import check_outputs
from . import quantile

# Arguments that name files a command reads, and files it writes.
_INPUT_ARGUMENTS = ("store", "subset", "meta", "scores", "models")
_OUTPUT_ARGUMENTS = ("out", "html", "curve", "kl_out", "coords", "plot")


def _inputs(args: argparse.Namespace) -> list[str]:
    """The files the command reads (model references only where they are files)."""
    found = []
    for name in _INPUT_ARGUMENTS:
        value = getattr(args, name, None)
        if name == "models":
            found += [model for model in value or () if Path(model).is_file()]
        elif value:
            found.append(value)
    return found


def _outputs(args: argparse.Namespace) -> list[str | None]:
    return [getattr(args, name, None) for name in _OUTPUT_ARGUMENTS]


def _checks_outputs(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """Refuse, before any work, outputs that are inputs, named twice, or cannot be written."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        check_outputs(_outputs(args), _inputs(args))
        return handler(args)

    return run


def _add_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "store",
        metavar="STORE",
        help="jaxmap store (.h5), .npy matrix, or HDF5 file with a K×N matrix",
    )
    parser.add_argument(
        "--clip-quantile",
        type=quantile,
        default=0.02,
        metavar="Q",
        help="clip log-likelihoods below this global quantile (default 0.02 as in the papers; "
        "0 disables)",
    )


@contextlib.contextmanager
def _about(source: str | Path) -> Iterator[None]:
    """Name ``source`` in the analysis errors raised inside: the file the numbers came from."""
    try:
        yield
    except AnalysisError as error:
        raise type(error)(f"{source}: {error}") from None


def _load_clipped(args: argparse.Namespace) -> tuple[LoglikMatrix, np.ndarray, float]:
    matrix = load_loglik(args.store)
    with _about(matrix.source):
        clipped, tau = clip(matrix.loglik, args.clip_quantile)
    return matrix, clipped, tau


def _describe(matrix: LoglikMatrix, tau: float, args: argparse.Namespace) -> str:
    models, texts = matrix.loglik.shape
    return (
        f"{matrix.source}: {models} models × {texts} texts, "
        f"clipped at τ = {tau:.6g} nats (quantile {args.clip_quantile:g})"
    )


def _exact(value: float) -> str:
    """A number for a CSV file: the shortest text that reads back as the same float64, so that
    a table written and read again holds the numbers computed, not a rounding of them."""
    return repr(float(value))


def _write_matrix_csv(
    path: Path,
    row_names: Sequence[str],
    column_names: Sequence[str],
    values: np.ndarray,
) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", *column_names])
        for name, row in zip(row_names, values):
            writer.writerow([name, *(_exact(v) for v in row)])


def _print_neighbors(
    names: Sequence[str], candidate_names: Sequence[str], indices, values, unit: str
) -> None:
    for name, row_indices, row_values in zip(names, indices, values):
        listed = ", ".join(
            f"{candidate_names[j]} ({v:.4g})" for j, v in zip(row_indices, row_values)
        )
        print(f"{name}: {listed}")
    print(f"(nearest first; estimated KL in {unit})")


def _snippet(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
