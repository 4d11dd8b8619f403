"""Likelihood-variance resampling of texts, and placing new models on an existing map.

With Q the double-centred matrix of a map (docs/method.md), texts are drawn with replacement from
π (LS: across-model variance; KL: the fourth-moment rule; or uniform). A text drawn c times is
kept once with the column scale ``sqrt(c) / sqrt(n·π_s)``; on the selected columns,
``Q̃ = (L_sel − rowmean_{scale²}(L_sel)) · scale`` and ``‖Q̃_i − Q̃_j‖²`` estimates
``‖q_i − q_j‖²``, the sum over all N texts. New models then need scores on the n selected texts
only.

Bias: ``Σ scale²·f(s)`` over the selected columns is an exactly unbiased (Hansen–Hurwitz)
estimate of ``Σ_s f(s)``; subtracting the weighted row mean makes the squared-distance estimate
a ratio estimator with a relative bias of order −1/n (for uniform sampling exactly the
familiar (n−1)/n of a variance computed with the sample mean). :func:`expected_distance_bias`
gives its leading term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import jax
import numpy as np

from ._arrays import AnalysisError, float64_matrix, require_finite
from .geometry import per_text_factor, squared_distances

METHODS = ("ls", "kl", "uniform")


@jax.jit
def _column_power_sums(Q: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    Q2 = Q * Q
    return Q.sum(axis=0), Q2.sum(axis=0), (Q2 * Q).sum(axis=0), (Q2 * Q2).sum(axis=0)


def sampling_probabilities(Q, method: str) -> np.ndarray:
    """The probability π_s of drawing text s (length N, sums to 1).

    ``"ls"``: π ∝ Σ_k Q_ks². ``"kl"``: π ∝ sqrt(max(2K·Σ Q⁴ + 6(Σ Q²)² − 8·ΣQ·ΣQ³, 0)).
    ``"uniform"``: π = 1/N.
    """
    if method not in METHODS:
        raise AnalysisError(
            f"unknown resampling method {method!r}; choose one of {', '.join(METHODS)}"
        )
    Q = float64_matrix(Q, "Q")
    require_finite(Q, "Q")
    n_models, n_texts = Q.shape
    if method == "uniform":
        return np.full(n_texts, 1.0 / n_texts)
    with jax.enable_x64(True):
        s1, s2, s3, s4 = (np.asarray(s) for s in _column_power_sums(jax.device_put(Q)))
    if method == "ls":
        weight = s2
    else:
        weight = np.sqrt(np.maximum(2 * n_models * s4 + 6 * s2**2 - 8 * s1 * s3, 0.0))
    total = weight.sum()
    if not total > 0:
        raise AnalysisError(
            f"{method} sampling needs texts on which the models disagree; all rows of Q are zero"
        )
    return weight / total


def _draw(probabilities: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    draws = np.random.default_rng(seed).choice(len(probabilities), size=n, p=probabilities)
    indices, counts = np.unique(draws, return_counts=True)
    return indices, np.sqrt(counts / (n * probabilities[indices]))


def resample(Q, n: int, method: str = "ls", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` texts with replacement from :func:`sampling_probabilities`.

    Returns ``(indices, scales)``: the distinct drawn text indices in increasing order, and
    each one's column scale ``sqrt(c)/sqrt(n·π_s)`` (c = times drawn). The same ``seed`` gives
    the same draw.
    """
    if n < 1:
        raise AnalysisError(f"the number of draws n must be positive, got {n}")
    return _draw(sampling_probabilities(Q, method), n, seed)


@jax.jit
def _weighted_coordinates(L_selected: jax.Array, scales: jax.Array) -> jax.Array:
    weights = scales * scales
    row_means = (L_selected @ weights) / weights.sum()
    return (L_selected - row_means[:, None]) * scales


def _check_selection(indices, scales, n_texts: int | None) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices)
    scales = np.asarray(scales, dtype=np.float64)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise AnalysisError("indices must be a 1-D array of integer text indices")
    if scales.shape != indices.shape:
        raise AnalysisError(f"{len(indices)} indices but {scales.size} scales")
    if len(indices) == 0:
        raise AnalysisError("the selection is empty")
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise AnalysisError("scales must be positive and finite")
    if n_texts is not None and (indices.min() < 0 or indices.max() >= n_texts):
        raise AnalysisError(
            f"indices must lie in [0, {n_texts}); got {indices.min()}..{indices.max()}"
        )
    return indices, scales


def _coordinates_of_selected(L_selected: np.ndarray, scales: np.ndarray) -> np.ndarray:
    require_finite(L_selected, "L")
    with jax.enable_x64(True):
        return np.asarray(_weighted_coordinates(jax.device_put(L_selected), jax.device_put(scales)))


def resampled_coordinates(L, indices, scales) -> np.ndarray:
    """Q̃ = (L_sel − rowmean_{scale²}(L_sel)) · scale on the selected columns of the K×N ``L``.

    Squared distances between rows of Q̃ estimate those between rows of ``double_center(L)``.
    ``L`` may equally be Q itself: both the row means and common column offsets drop out.
    The result is a read-only float64 array.
    """
    L = float64_matrix(L)
    indices, scales = _check_selection(indices, scales, L.shape[1])
    return _coordinates_of_selected(L[:, indices], scales)


def place_models(L_map, tau: float, indices, scales, L_new, *, text_bytes=None) -> np.ndarray:
    """Estimated KL from new models to every model of an existing map.

    ``L_map`` is the map's K×N log-likelihood matrix, ``tau`` its clipping threshold and
    ``(indices, scales)`` a resample of its texts. ``L_new`` (M×n, or a single row of n) holds
    the new models' log-likelihoods on the n selected texts only, in the order of ``indices``.
    Both are clipped at ``tau`` and compared through their resampled coordinates. Returns an
    M×K matrix in nats per text, or in bits per byte given the map's ``text_bytes`` (length N).
    """
    L_map = float64_matrix(L_map, "L_map")
    indices, scales = _check_selection(indices, scales, L_map.shape[1])
    L_new = np.asarray(L_new, dtype=np.float64)
    L_new = float64_matrix(L_new[None, :] if L_new.ndim == 1 else L_new, "L_new")
    if L_new.shape[1] != len(indices):
        raise AnalysisError(
            f"L_new has {L_new.shape[1]} columns but the selection has {len(indices)} texts"
        )
    if np.isnan(L_new).any():
        raise AnalysisError("L_new has NaN entries")
    map_coordinates = _coordinates_of_selected(np.maximum(L_map[:, indices], tau), scales)
    new_coordinates = _coordinates_of_selected(np.maximum(L_new, tau), scales)
    distances = squared_distances(new_coordinates, map_coordinates)
    return distances * per_text_factor(L_map.shape[1], text_bytes)


def expected_distance_bias(Q, probabilities, n: int) -> np.ndarray:
    """Leading-order bias of the resampled squared distances, as a K×K matrix.

    For δ = q_i − q_j the estimate has expectation ``‖δ‖² − Σ_s δ_s²/π_s / (n·N) + O(n⁻²)``
    (second-order expansion of the ratio estimator); this returns the second term (≤ 0).
    Texts with π_s = 0 contribute nothing: for a double-centred Q all models agree on them.
    """
    Q = float64_matrix(Q, "Q")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    drawable = probabilities > 0
    weighted = Q[:, drawable] / np.sqrt(probabilities[drawable])
    return -squared_distances(weighted) / (n * Q.shape[1])


@dataclass(frozen=True)
class ResamplingCurve:
    """Relative Frobenius errors of resampled squared distances, per method, size and seed."""

    sizes: np.ndarray
    seeds: tuple[int, ...]
    errors: dict[str, np.ndarray]  # method -> len(sizes) × len(seeds)

    def mean(self, method: str) -> np.ndarray:
        """The error averaged over seeds, one value per size."""
        return self.errors[method].mean(axis=1)

    def sd(self, method: str) -> np.ndarray:
        """The standard deviation over seeds, one value per size."""
        return (
            self.errors[method].std(axis=1, ddof=1)
            if len(self.seeds) > 1
            else np.zeros(len(self.sizes))
        )


def resampling_curve(
    Q,
    sizes: Sequence[int],
    methods: Sequence[str] = METHODS,
    seeds: Iterable[int] = range(10),
    *,
    progress: bool = False,
) -> ResamplingCurve:
    """The paper's error curve: ‖D̃ − D‖_F / ‖D‖_F for each method, draw size n and seed.

    D is the matrix of pairwise squared distances between rows of Q and D̃ its estimate from
    a resample of n draws.
    """
    Q = float64_matrix(Q, "Q")
    seeds = tuple(int(s) for s in seeds)
    sizes = np.asarray(sorted(set(int(n) for n in sizes)))
    if len(sizes) == 0 or sizes[0] < 1 or not seeds:
        raise AnalysisError("the curve needs positive sizes and at least one seed")
    exact = squared_distances(Q)
    exact_norm = np.linalg.norm(exact)
    if not exact_norm > 0:
        raise AnalysisError("all models are identical: there are no distances to estimate")
    probabilities = {method: sampling_probabilities(Q, method) for method in methods}
    errors = {method: np.empty((len(sizes), len(seeds))) for method in methods}
    runs = [(m, a, b) for m in methods for a in range(len(sizes)) for b in range(len(seeds))]
    if progress:
        from tqdm.auto import tqdm

        runs = tqdm(runs, desc="resampling curve", unit="draw")
    for method, size_index, seed_index in runs:
        n = int(sizes[size_index])
        indices, scales = _draw(probabilities[method], n, seeds[seed_index])
        # Pad to n columns of scale 0 (they add nothing) so each n compiles once, not once per
        # number of distinct texts drawn.
        padded_indices = np.zeros(n, np.int64)
        padded_scales = np.zeros(n)
        padded_indices[: len(indices)] = indices
        padded_scales[: len(scales)] = scales
        estimate = squared_distances(_coordinates_of_selected(Q[:, padded_indices], padded_scales))
        errors[method][size_index, seed_index] = np.linalg.norm(estimate - exact) / exact_norm
    return ResamplingCurve(sizes=sizes, seeds=seeds, errors=errors)
