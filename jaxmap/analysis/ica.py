"""Independent axes of the model map: PCA whitening, then FastICA, on the double-centred matrix.

The texts are the samples and the models the features: Q (K×N) is transposed to N points in
R^K, whitened by its top ``k`` principal components, and rotated by FastICA (symmetric
decorrelation, log-cosh contrast) so that the N texts' scores on each axis are as non-Gaussian,
and so as independent, as a rotation can make them. Each axis then has two readings: the texts
that score highest on it (its source values) and the models that load most on it (its column of
the mixing matrix, in the map's own units, so that ``Q ≈ loadings @ sourcesᵀ``).

Axes are signed so that their sources' skewness is positive and ordered by non-Gaussianity
(the log-cosh negentropy proxy). Dependence that ICA leaves between axes is measured by the
correlation of the squared sources, and summarised by the maximum spanning tree over it.

The iteration is jitted JAX in float64 (x64 only inside the call, as in :mod:`.geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree

from .._moved import old_home
from ._arrays import AnalysisError, float64_matrix
from .geometry import double_center


@dataclass(frozen=True)
class ICAResult:
    """Independent axes of a map.

    ``sources`` [N, k]: each text's score on each axis (unit variance); ``loadings`` [K, k]:
    each model's weight on each axis, with ``Q ≈ loadings @ sources.T`` up to the discarded
    principal components; ``non_gaussianity`` [k]: the negentropy proxy per axis (descending);
    ``square_correlation`` [k, k]: correlation of the squared sources; ``tree``: the edges
    ``(i, j, weight)`` of the maximum spanning tree under that correlation; ``explained``: the
    share of Q's total variance that the k whitened components keep; ``iterations``, and
    ``converged`` when the rotation changed by less than the tolerance.
    """

    sources: np.ndarray
    loadings: np.ndarray
    non_gaussianity: np.ndarray
    square_correlation: np.ndarray
    tree: list[tuple[int, int, float]]
    explained: float
    iterations: int
    converged: bool


def _symmetric_decorrelation(w: jax.Array) -> jax.Array:
    # W ← (W Wᵀ)^(-1/2) W keeps the rows orthonormal without favouring any of them.
    values, vectors = jnp.linalg.eigh(w @ w.T)
    return vectors @ jnp.diag(1.0 / jnp.sqrt(jnp.maximum(values, 1e-300))) @ vectors.T @ w


@jax.jit
def _fastica(z: jax.Array, w0: jax.Array, tolerance: float, max_iterations: int):
    """Symmetric FastICA with g = tanh on whitened z [N, k]; returns (W, iterations, change)."""
    samples = z.shape[0]

    def step(state):
        w, iteration, _ = state
        projections = z @ w.T  # [N, k]
        g = jnp.tanh(projections)
        g_prime = 1.0 - g**2
        updated = (g.T @ z) / samples - jnp.mean(g_prime, axis=0)[:, None] * w
        updated = _symmetric_decorrelation(updated)
        change = jnp.max(jnp.abs(jnp.abs(jnp.sum(updated * w, axis=1)) - 1.0))
        return updated, iteration + 1, change

    def running(state):
        _, iteration, change = state
        return (change > tolerance) & (iteration < max_iterations)

    initial = (_symmetric_decorrelation(w0), jnp.int32(0), jnp.asarray(jnp.inf, z.dtype))
    return jax.lax.while_loop(running, step, initial)


def _negentropy_proxy(sources: np.ndarray) -> np.ndarray:
    # (E[log cosh y] − E[log cosh ν])², ν standard normal: Hyvärinen's approximation.
    gaussian = 0.3745672075  # E[log cosh ν] for ν ~ N(0, 1)
    return (np.mean(np.log(np.cosh(sources)), axis=0) - gaussian) ** 2


def _maximum_spanning_tree(weights: np.ndarray) -> list[tuple[int, int, float]]:
    size = len(weights)
    if size < 2:
        return []
    # The minimum spanning tree of (max + 1 − w) is the maximum spanning tree of w; the shift
    # keeps every off-diagonal weight positive (zero would read as "no edge").
    shifted = np.where(np.eye(size, dtype=bool), 0.0, weights.max() + 1.0 - weights)
    tree = minimum_spanning_tree(shifted).tocoo()
    return sorted(
        (int(min(i, j)), int(max(i, j)), float(weights[i, j])) for i, j in zip(tree.row, tree.col)
    )


def ica(
    L,
    components: int,
    *,
    seed: int = 0,
    tolerance: float = 1e-8,
    max_iterations: int = 2000,
    centred: bool = False,
) -> ICAResult:
    """Independent axes of the map of the K×N log-likelihood matrix ``L`` (clip it first, as
    for the map), or of Q itself with ``centred=True``.

    ``components`` k ≤ min(K − 1, N): Q has rank at most K − 1 after double centring.
    """
    Q = float64_matrix(L, "L") if centred else double_center(L)
    models, texts = Q.shape
    if not 1 <= components <= min(models - 1, texts):
        raise AnalysisError(
            f"--components must be between 1 and {min(models - 1, texts)} for {models} models "
            f"and {texts} texts (double centring leaves rank K - 1), got {components}"
        )
    # X = Qᵀ: texts are samples. Its columns already have mean zero (Q's rows do).
    u, s, vt = np.linalg.svd(Q.T, full_matrices=False)
    if s[components - 1] <= s[0] * 1e-12:
        raise AnalysisError(
            f"Q has only {int(np.sum(s > s[0] * 1e-12))} non-degenerate components; "
            f"ask for fewer than {components}"
        )
    whitened = u[:, :components] * np.sqrt(texts)
    w0 = np.random.default_rng(seed).standard_normal((components, components))
    with jax.enable_x64(True):
        w, iterations, change = _fastica(
            jnp.asarray(whitened), jnp.asarray(w0), tolerance, max_iterations
        )
        w, iterations, change = np.asarray(w), int(iterations), float(change)
    sources = whitened @ w.T
    # Q ≈ V_k S_k U_kᵀ = (V_k S_k / √N) Wᵀ (W whitened)ᵀ, and W is orthogonal.
    loadings = (vt[:components].T * s[:components] / np.sqrt(texts)) @ w.T
    skew = np.mean(sources**3, axis=0)
    signs = np.where(skew < 0, -1.0, 1.0)
    sources, loadings = sources * signs, loadings * signs
    score = _negentropy_proxy(sources)
    order = np.argsort(-score, kind="stable")
    sources, loadings, score = sources[:, order], loadings[:, order], score[order]
    squared = sources**2
    square_correlation = np.corrcoef(squared, rowvar=False) if components > 1 else np.ones((1, 1))
    return ICAResult(
        sources=sources,
        loadings=loadings,
        non_gaussianity=score,
        square_correlation=np.atleast_2d(square_correlation),
        tree=_maximum_spanning_tree(np.atleast_2d(square_correlation)),
        explained=float(np.sum(s[:components] ** 2) / np.sum(s**2)),
        iterations=iterations,
        converged=change <= tolerance,
    )


# plot_component_tree moved to .plots, beside the other pictures; the old import warns but works.
__getattr__ = old_home(__name__, {"plot_component_tree": "jaxmap.analysis.plots"})
