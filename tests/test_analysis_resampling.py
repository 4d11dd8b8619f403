"""Likelihood-variance resampling: probabilities, unbiasedness, gain over uniform, placement."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmap.analysis import (
    AnalysisError,
    clip,
    double_center,
    expected_distance_bias,
    kl_matrix,
    place_models,
    resample,
    resampled_coordinates,
    resampling_curve,
    sampling_probabilities,
    squared_distances,
)

METHODS = ("ls", "kl", "uniform")


def heteroscedastic_loglik(
    rng: np.random.Generator, models: int = 12, texts: int = 1500
) -> np.ndarray:
    """Texts differ widely in how much models disagree on them (log-normal spread per text)."""
    disagreement = rng.lognormal(0.0, 1.0, texts)
    difficulty = -rng.uniform(200.0, 2000.0, texts)
    return (
        difficulty
        + rng.normal(size=(models, texts)) * disagreement
        + rng.normal(0.0, 20.0, (models, 1))
    )


@pytest.fixture(scope="module")
def loglik() -> np.ndarray:
    return heteroscedastic_loglik(np.random.default_rng(0))


def numpy_weighted_coordinates(
    L: np.ndarray, indices: np.ndarray, scales: np.ndarray
) -> np.ndarray:
    selected = L[:, indices]
    weights = scales**2
    return (selected - (selected @ weights / weights.sum())[:, None]) * scales


def test_sampling_probabilities_follow_design_formulas(loglik):
    Q = double_center(loglik)
    K = Q.shape[0]
    s1, s2, s3, s4 = (np.sum(Q**p, axis=0) for p in (1, 2, 3, 4))
    kl_weight = np.sqrt(np.maximum(2 * K * s4 + 6 * s2**2 - 8 * s1 * s3, 0))
    expected = {
        "ls": s2 / s2.sum(),
        "kl": kl_weight / kl_weight.sum(),
        "uniform": np.full(Q.shape[1], 1 / Q.shape[1]),
    }
    for method in METHODS:
        np.testing.assert_allclose(sampling_probabilities(Q, method), expected[method], rtol=1e-10)
    with pytest.raises(AnalysisError, match="unknown resampling method"):
        sampling_probabilities(Q, "variance")
    with pytest.raises(AnalysisError, match="disagree"):
        sampling_probabilities(np.zeros((3, 5)), "ls")


def test_resample_returns_unique_indices_with_count_scales(loglik):
    Q = double_center(loglik)
    n = 400
    for method in METHODS:
        indices, scales = resample(Q, n, method, seed=3)
        assert np.all(np.diff(indices) > 0)
        counts = (
            scales**2 * n * sampling_probabilities(Q, method)[indices]
        )  # scale = sqrt(c / (nπ))
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
        assert round(counts.sum()) == n
        assert counts.max() >= 2 or method == "uniform"  # duplicates occur and are merged
        again = resample(Q, n, method, seed=3)
        np.testing.assert_array_equal(again[0], indices)
        assert not np.array_equal(resample(Q, n, method, seed=4)[0], indices)


def test_resampled_coordinates_follow_design_and_ignore_row_and_column_offsets(loglik):
    Q = double_center(loglik)
    indices, scales = resample(Q, 300, "ls", seed=0)
    from_l = resampled_coordinates(loglik, indices, scales)
    np.testing.assert_allclose(
        from_l, numpy_weighted_coordinates(loglik, indices, scales), rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(
        squared_distances(resampled_coordinates(Q, indices, scales)),
        squared_distances(from_l),
        rtol=1e-9,
    )
    with pytest.raises(AnalysisError, match="scales"):
        resampled_coordinates(loglik, indices, -scales)
    with pytest.raises(AnalysisError, match=r"indices must lie"):
        resampled_coordinates(loglik, indices + loglik.shape[1], scales)


def test_importance_weights_are_unbiased_over_seeds(loglik):
    """Σ_selected scale²·f(s) estimates Σ_s f(s) without bias, duplicates included.

    f is the squared coordinate difference of one pair of models, the quantity whose sum over
    texts is their squared distance.
    """
    Q = double_center(loglik)
    f = (Q[0] - Q[1]) ** 2
    seeds = 1500
    for method in METHODS:
        estimates = []
        for seed in range(seeds):
            indices, scales = resample(Q, 100, method, seed)
            estimates.append(np.sum(scales**2 * f[indices]))
        estimates = np.asarray(estimates)
        standard_error = estimates.std(ddof=1) / np.sqrt(seeds)
        assert abs(estimates.mean() - f.sum()) < 4 * standard_error, method


def test_resampled_distances_are_unbiased_up_to_the_ratio_estimator_term(loglik):
    """The weighted row mean makes the estimate a ratio estimator, biased by O(1/n).

    Over seeds, the mean estimate equals the true squared distance plus the leading bias term
    of :func:`expected_distance_bias`, and that term is at most 2/n of the distance.
    """
    Q = double_center(loglik)
    exact = squared_distances(Q)
    pairs = np.triu_indices(Q.shape[0], 1)
    n, seeds = 100, 1500
    for method in METHODS:
        totals = []
        for seed in range(seeds):
            indices, scales = resample(Q, n, method, seed)
            coordinates = numpy_weighted_coordinates(loglik, indices, scales)
            totals.append(((coordinates[:, None] - coordinates[None]) ** 2).sum(-1)[pairs].sum())
        totals = np.asarray(totals)
        bias = expected_distance_bias(Q, sampling_probabilities(Q, method), n)[pairs].sum()
        standard_error = totals.std(ddof=1) / np.sqrt(seeds)
        assert abs(totals.mean() - exact[pairs].sum() - bias) < 4 * standard_error, method
        assert -bias <= 2.0 / n * exact[pairs].sum()


def test_ls_and_kl_sampling_beat_uniform_at_equal_n(loglik):
    curve = resampling_curve(double_center(loglik), [100, 400], seeds=range(8))
    for position in range(2):
        uniform = curve.mean("uniform")[position]
        assert curve.mean("ls")[position] < 0.6 * uniform
        assert curve.mean("kl")[position] < 0.6 * uniform
    for method in METHODS:  # more texts, smaller error
        assert curve.mean(method)[1] < curve.mean(method)[0]


def test_place_models_on_all_texts_reproduces_kl_matrix(loglik):
    held_out = loglik[-3:]
    map_loglik = loglik[:-3]
    all_texts = np.arange(loglik.shape[1])
    placed = place_models(map_loglik, loglik.min(), all_texts, np.ones(loglik.shape[1]), held_out)
    np.testing.assert_allclose(placed, kl_matrix(loglik)[-3:, :-3], rtol=1e-9)


def test_place_models_estimates_kl_from_a_subset(loglik):
    clipped, tau = clip(loglik)
    map_loglik, new = clipped[:-2], loglik[-2:]
    Q = double_center(map_loglik)
    indices, scales = resample(Q, 400, "ls", seed=1)
    placed = place_models(map_loglik, tau, indices, scales, new[:, indices])
    exact = kl_matrix(np.vstack([map_loglik, np.maximum(new, tau)]))[-2:, :-2]
    assert np.linalg.norm(placed - exact) / np.linalg.norm(exact) < 0.15
    # A new model identical to a map model lands on it (up to float64 rounding).
    copy = place_models(map_loglik, tau, indices, scales, map_loglik[4, indices])
    assert copy.shape == (1, map_loglik.shape[0])
    assert copy[0, 4] < 1e-12 * np.delete(copy[0], 4).min()


def test_place_models_clips_new_models_with_the_maps_tau(loglik):
    clipped, tau = clip(loglik)
    indices, scales = resample(double_center(clipped[:-1]), 200, "kl", seed=2)
    new = loglik[-1, indices].copy()
    new[:5] = -np.inf
    floored = new.copy()
    floored[:5] = tau
    np.testing.assert_array_equal(
        place_models(clipped[:-1], tau, indices, scales, new),
        place_models(clipped[:-1], tau, indices, scales, floored),
    )
    text_bytes = np.full(loglik.shape[1], 512)
    np.testing.assert_allclose(
        place_models(clipped[:-1], tau, indices, scales, floored, text_bytes=text_bytes),
        place_models(clipped[:-1], tau, indices, scales, floored) / (512 * np.log(2)),
        rtol=1e-12,
    )
    with pytest.raises(AnalysisError, match="columns but the selection has"):
        place_models(clipped[:-1], tau, indices, scales, loglik[-1:])
