"""Texts on which one model is far more likely than its neighbours predict (leakage signal).

A model that saw a text in training gives it a higher log-likelihood than models like it do.
For model i the prediction of its row-centred log-likelihood ξ_is is the mean over its k
nearest models (by estimated KL) of their ξ_js: those share its tokenizer, data and size, so
the text's difficulty for "a model like i" cancels. The residual ξ_is − mean_j ξ_js is in nats;
dividing by a robust spread (1.4826 · median absolute deviation over texts) gives a z-score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import AnalysisError, float64_matrix, require_finite
from .geometry import double_center, squared_distances


@dataclass(frozen=True)
class TextOutliers:
    """Per-text residuals of one model against its nearest neighbours."""

    model: int
    neighbors: np.ndarray  # indices of the models whose mean is the prediction
    residual: np.ndarray  # N, nats: ξ_is − mean over neighbours of ξ_js
    z: np.ndarray  # N, residual / robust spread

    def top(self, count: int) -> np.ndarray:
        """Indices of the ``count`` texts with the largest z, largest first."""
        return np.argsort(-self.z, kind="stable")[:count]


def text_outliers(L, model: int, *, neighbors: int = 10) -> TextOutliers:
    """Residuals of row ``model`` of the K×N ``L`` against its ``neighbors`` nearest models."""
    L = float64_matrix(L)
    require_finite(L)
    n_models = L.shape[0]
    if n_models < 2:
        raise AnalysisError("outliers need at least one other model to compare with")
    if not 0 <= model < n_models:
        raise AnalysisError(f"model index {model} is outside 0..{n_models - 1}")
    if neighbors < 1:
        raise AnalysisError(f"neighbors must be positive, got {neighbors}")
    Q = double_center(L)
    distances = squared_distances(Q[model : model + 1], Q)[0]
    distances[model] = np.inf
    nearest = np.argsort(distances, kind="stable")[: min(neighbors, n_models - 1)]
    centred = L[[model, *nearest]] - L[[model, *nearest]].mean(axis=1, keepdims=True)
    residual = centred[0] - centred[1:].mean(axis=0)
    deviation = np.abs(residual - np.median(residual))
    spread = 1.4826 * np.median(deviation)
    if not spread > 0:
        spread = residual.std()
    z = residual / spread if spread > 0 else np.zeros_like(residual)
    return TextOutliers(model=model, neighbors=nearest, residual=residual, z=z)
