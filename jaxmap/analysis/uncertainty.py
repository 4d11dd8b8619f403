"""How much of the map is the text sample: positions under a bootstrap over texts.

The map's 2-D positions are the top two principal axes of Q/√(2N), a linear projection in which
squared distances are (the leading part of) the KL estimate in nats per text. Each bootstrap
replicate redraws N texts with replacement, recomputes Q, projects it the same way and is
aligned to the full map by orthogonal Procrustes (rotation or reflection plus translation, no
scaling, since the map's scale means something). A model's replicate positions give its
covariance, drawn as the ellipse holding ``level`` of a Gaussian with that covariance. Nearest
neighbours are re-read in every replicate (in the full K-dimensional Q, not the 2-D
projection), so the report says how often each model keeps its neighbour.

Linear projections are used because they can be aligned; t-SNE positions of different
replicates are not comparable point by point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import AnalysisError
from .geometry import double_center, squared_distances


@dataclass(frozen=True)
class MapUncertainty:
    """Bootstrap positions of a map.

    ``center`` [K, 2]: the full map's positions; ``replicates`` [B, K, 2]: the aligned
    replicate positions; ``covariance`` [K, 2, 2]; ``ellipse_axes`` [K, 2] (semi-axes, major
    first) and ``ellipse_angle`` [K] (radians) of the ``level`` ellipse; ``area`` [K];
    ``neighbor`` [K]: each model's nearest neighbour on the full map; ``neighbor_stability`` [K]:
    the share of replicates in which it stays the nearest.
    """

    center: np.ndarray
    replicates: np.ndarray
    covariance: np.ndarray
    ellipse_axes: np.ndarray
    ellipse_angle: np.ndarray
    area: np.ndarray
    neighbor: np.ndarray
    neighbor_stability: np.ndarray
    level: float


def _project(Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions [K, 2] on the top two principal axes of Q/√(2N), and those axes [2, N]."""
    scaled = Q / np.sqrt(2.0 * Q.shape[1])
    _, _, vt = np.linalg.svd(scaled, full_matrices=False)
    axes = vt[:2]
    return scaled @ axes.T, axes


def _procrustes(moving: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``moving`` rotated/reflected and translated onto ``target`` (least squares)."""
    moving_mean, target_mean = moving.mean(axis=0), target.mean(axis=0)
    u, _, vt = np.linalg.svd((moving - moving_mean).T @ (target - target_mean))
    return (moving - moving_mean) @ (u @ vt) + target_mean


def _nearest(Q: np.ndarray) -> np.ndarray:
    distances = squared_distances(Q)
    np.fill_diagonal(distances, np.inf)
    return np.argmin(distances, axis=1)


def bootstrap_map(L, replicates: int = 200, *, seed: int = 0, level: float = 0.95) -> MapUncertainty:
    """Bootstrap over texts of the clipped K×N log-likelihood matrix ``L`` (clip it first, with
    the map's τ): see the module docstring."""
    L = np.asarray(L, np.float64)
    models, texts = L.shape
    if models < 3:
        raise AnalysisError(f"a map's uncertainty needs at least 3 models, got {models}")
    if texts < 2:
        raise AnalysisError(f"a bootstrap over texts needs at least 2 texts, got {texts}")
    if replicates < 2:
        raise AnalysisError(f"need at least 2 bootstrap replicates, got {replicates}")
    if not 0.0 < level < 1.0:
        raise AnalysisError(f"the ellipse level must be in (0, 1), got {level}")
    Q = np.array(double_center(L))
    center, _ = _project(Q)
    neighbor = _nearest(Q)
    rng = np.random.default_rng(seed)
    positions = np.empty((replicates, models, 2))
    kept = np.zeros(models)
    for replicate in range(replicates):
        columns = rng.integers(0, texts, size=texts)
        resampled = np.array(double_center(L[:, columns]))
        positions[replicate] = _procrustes(_project(resampled)[0], center)
        kept += _nearest(resampled) == neighbor
    offsets = positions - positions.mean(axis=0)
    covariance = np.einsum("bki,bkj->kij", offsets, offsets) / (replicates - 1)
    values, vectors = np.linalg.eigh(covariance)  # ascending
    # A 2-D Gaussian holds mass `level` inside radius sqrt(-2 log(1 - level)) (chi-square, 2 dof).
    radius = np.sqrt(-2.0 * np.log1p(-level))
    axes = radius * np.sqrt(np.maximum(values[:, ::-1], 0.0))
    angle = np.arctan2(vectors[:, 1, 1], vectors[:, 0, 1])
    return MapUncertainty(
        center=center,
        replicates=positions,
        covariance=covariance,
        ellipse_axes=axes,
        ellipse_angle=angle,
        area=np.pi * axes[:, 0] * axes[:, 1],
        neighbor=neighbor,
        neighbor_stability=kept / replicates,
        level=level,
    )


def plot_uncertainty(
    result: MapUncertainty, names: list[str], path, *, labels: int = 30, title: str = ""
) -> None:
    """The map with each model's bootstrap ellipse, as an image at ``path``. Labels go to the
    ``labels`` models with the largest ellipses (every model when there are fewer). Written
    atomically, in the format of ``path``'s suffix."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse

    from .plots import _save

    figure = Figure(figsize=(8, 6.5), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for (x, y), (major, minor), angle in zip(result.center, result.ellipse_axes, result.ellipse_angle):
        axes.add_patch(
            Ellipse((x, y), 2 * major, 2 * minor, angle=np.degrees(angle),
                    facecolor="#1f77b4", alpha=0.18, edgecolor="#1f77b4", linewidth=0.8)
        )
    axes.scatter(result.center[:, 0], result.center[:, 1], s=14, color="#d62728", zorder=3)
    shown = np.argsort(-result.area, kind="stable")[:labels]
    for index in shown:
        axes.annotate(
            names[index], result.center[index], xytext=(4, 4), textcoords="offset points",
            fontsize=7, clip_on=True,
        )
    axes.set_aspect("equal", adjustable="datalim")
    axes.autoscale_view()
    axes.set_xlabel("PC1 of Q/√(2N)")
    axes.set_ylabel("PC2 of Q/√(2N)")
    axes.set_title(
        title or f"Model map with {result.level:.0%} bootstrap ellipses "
        f"({len(result.replicates)} replicates over texts)",
        fontsize=10,
    )
    _save(figure, path)
