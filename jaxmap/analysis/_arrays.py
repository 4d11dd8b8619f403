"""Input checks and the float64 switch shared by the analysis modules."""

from __future__ import annotations

import numpy as np
from ..errors import AnalysisError



def float64_matrix(values, name: str = "L") -> np.ndarray:
    """``values`` (numpy or JAX) as a 2-D float64 numpy array, copied only if needed."""
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2:
        raise AnalysisError(
            f"{name} must be a 2-D matrix (models × texts), got shape {matrix.shape}"
        )
    if 0 in matrix.shape:
        raise AnalysisError(f"{name} is empty (shape {matrix.shape})")
    return matrix


def require_finite(matrix: np.ndarray, name: str = "L") -> None:
    """Refuse NaN and ±inf, naming the first offending rows (models)."""
    finite = np.isfinite(matrix)
    if not finite.all():
        raise_non_finite(matrix, name, finite)


def raise_non_finite(matrix: np.ndarray, name: str, finite: np.ndarray | None = None) -> None:
    """Raise the error for a matrix known to hold NaN or ±inf."""
    finite = np.isfinite(matrix) if finite is None else finite
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    shown = ", ".join(str(row) for row in bad_rows[:5]) + (" ..." if len(bad_rows) > 5 else "")
    raise AnalysisError(
        f"{name} has {int((~finite).sum())} NaN or infinite entries in {len(bad_rows)} rows "
        f"(rows {shown}); clip -inf log-likelihoods first and drop rows with NaN"
    )
