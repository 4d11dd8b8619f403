"""Clipping, double centering and KL estimates against float64 numpy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmap.analysis import (
    AnalysisError,
    clip,
    double_center,
    kl_matrix,
    nearest_neighbors,
    squared_distances,
)


def reference_q(L: np.ndarray) -> np.ndarray:
    xi = L - L.mean(axis=1, keepdims=True)
    return xi - xi.mean(axis=0, keepdims=True)


def reference_kl(L: np.ndarray) -> np.ndarray:
    """KL_ij = Var_s(ℓ_is − ℓ_js) / 2, from the differences themselves (no Gram expansion)."""
    differences = L[:, None, :] - L[None, :, :]
    return differences.var(axis=2) / 2.0


def max_relative_error(estimate: np.ndarray, reference: np.ndarray) -> float:
    off_diagonal = ~np.eye(len(reference), dtype=bool)
    return float(np.max(np.abs(estimate - reference)[off_diagonal] / reference[off_diagonal]))


def realistic_loglik(rng: np.random.Generator, models: int, texts: int) -> np.ndarray:
    """Per-text log-likelihoods in the hundreds of nats: shared text difficulty + model effects."""
    difficulty = -rng.uniform(200.0, 2000.0, texts)
    return difficulty + rng.normal(0.0, 5.0, (models, texts)) + rng.normal(0.0, 20.0, (models, 1))


def near_identical_loglik(rng: np.random.Generator) -> np.ndarray:
    """Checkpoints a tiny step apart (KL ~1e-9 nats per text) next to distant models, ℓ ~ −1000.

    The close pairs are far from the centroid, so ‖q_i − q_j‖² ≪ ‖q_i‖² + ‖q_j‖²: the case
    where a Gram-expansion distance cancels catastrophically.
    """
    texts = 3000
    difficulty = -1000.0 + rng.normal(0.0, 150.0, texts)
    distant = difficulty + rng.normal(0.0, 30.0, (6, texts))
    trajectory = difficulty + 40.0 * rng.normal(0.0, 1.0, texts)
    checkpoints = trajectory + np.cumsum(rng.normal(0.0, 5e-5, (8, texts)), axis=0)
    return np.concatenate([distant, checkpoints])


def test_clip_uses_one_global_quantile():
    rng = np.random.default_rng(0)
    L = realistic_loglik(rng, 12, 300)
    L[3, 7] = -np.inf  # a text a model gives probability zero
    clipped, tau = clip(L, 0.02)
    assert tau == np.quantile(L, 0.02)
    np.testing.assert_array_equal(clipped, np.maximum(L, tau))
    assert clipped.min() == tau
    unchanged, _ = clip(L[:, :5], 0.0)
    np.testing.assert_array_equal(unchanged, L[:, :5])


def test_clip_refuses_nan_and_bad_quantiles():
    L = np.zeros((3, 4))
    L[1, 2] = np.nan
    with pytest.raises(AnalysisError, match="rows 1"):
        clip(L)
    with pytest.raises(AnalysisError, match="quantile"):
        clip(np.zeros((3, 4)), 1.5)


def test_double_center_matches_numpy():
    rng = np.random.default_rng(1)
    L = realistic_loglik(rng, 17, 400)
    Q = double_center(L)
    assert Q.dtype == np.float64
    np.testing.assert_allclose(Q, reference_q(L), rtol=0, atol=1e-10)
    np.testing.assert_allclose(Q.sum(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(Q.sum(axis=1), 0, atol=1e-9)


def test_kl_matrix_matches_float64_reference():
    rng = np.random.default_rng(2)
    L = realistic_loglik(rng, 25, 500)
    assert max_relative_error(kl_matrix(L), reference_kl(L)) < 1e-6


def test_tiny_kl_between_near_identical_models_keeps_1e_6_relative_precision():
    rng = np.random.default_rng(3)
    L = near_identical_loglik(rng)
    reference = reference_kl(L)
    assert reference[6, 7] < 1e-6 < reference[0, 1]  # the test spans tiny and large KL
    estimate = kl_matrix(L, block_size=5)
    assert max_relative_error(estimate, reference) < 1e-6

    # The matrix has teeth: JAX's default float32 is off by orders of magnitude, and so is the
    # float64 Gram expansion without the recomputation of cancelling pairs.
    Q32 = jnp.asarray(L) - jnp.asarray(L).mean(axis=1, keepdims=True)
    Q32 = Q32 - Q32.mean(axis=0, keepdims=True)
    float32_kl = np.asarray(((Q32[:, None] - Q32[None]) ** 2).sum(-1), np.float64) / (
        2 * L.shape[1]
    )
    assert max_relative_error(float32_kl, reference) > 1e-2
    Q = reference_q(L)
    norms = (Q**2).sum(axis=1)
    gram_kl = (norms[:, None] + norms[None, :] - 2 * Q @ Q.T) / (2 * L.shape[1])
    assert max_relative_error(gram_kl, reference) > 1e-6


def test_kl_is_exactly_symmetric_with_zero_diagonal_and_zero_for_duplicates():
    rng = np.random.default_rng(4)
    L = realistic_loglik(rng, 23, 200)
    L[9] = L[2]  # a model scored twice
    kl = kl_matrix(L, block_size=7)  # 23 = 3·7 + 2: partial and shifted blocks
    assert np.array_equal(kl, kl.T)
    assert np.all(np.diag(kl) == 0)
    assert kl[2, 9] == 0.0
    distinct = ~np.eye(23, dtype=bool)
    distinct[2, 9] = distinct[9, 2] = False
    assert np.all(kl[distinct] > 0)


def test_block_size_does_not_change_the_result():
    rng = np.random.default_rng(5)
    L = realistic_loglik(rng, 30, 150)
    whole = kl_matrix(L, block_size=4096)
    for block_size in (1, 8, 29):
        np.testing.assert_allclose(kl_matrix(L, block_size=block_size), whole, rtol=1e-12, atol=0)


def test_bits_per_byte_divides_by_mean_bytes_and_ln2():
    rng = np.random.default_rng(6)
    L = realistic_loglik(rng, 10, 120)
    text_bytes = rng.integers(256, 1024, 120)
    bpb = kl_matrix(L, text_bytes=text_bytes)
    # docs/method.md: KL_bpb = Var_s(ℓ_is − ℓ_js) / (2 · B̄ · ln 2)
    expected = np.array([[np.var(a - b) for b in L] for a in L]) / (
        2 * text_bytes.mean() * np.log(2)
    )
    assert max_relative_error(bpb, expected) < 1e-6
    with pytest.raises(AnalysisError, match="text_bytes"):
        kl_matrix(L, text_bytes=text_bytes[:-1])


def test_jax_and_float32_inputs_give_numpy_float64_and_leave_inputs_alone():
    rng = np.random.default_rng(7)
    L = realistic_loglik(rng, 8, 64)
    before = L.copy()
    from_numpy = kl_matrix(L)
    np.testing.assert_array_equal(L, before)  # the device copy is donated, never the caller's
    as_jax = jnp.asarray(L.astype(np.float32))
    from_jax = kl_matrix(as_jax)
    assert isinstance(from_jax, np.ndarray) and from_jax.dtype == np.float64
    assert np.isfinite(np.asarray(as_jax)).all()  # still usable
    expected = reference_kl(np.asarray(as_jax, np.float64))
    assert max_relative_error(from_jax, expected) < 1e-6
    assert not jax.config.jax_enable_x64  # float64 was switched on only inside the call
    assert from_numpy.shape == (8, 8)


def test_out_array_on_disk(tmp_path):
    rng = np.random.default_rng(8)
    L = realistic_loglik(rng, 12, 50)
    out = np.lib.format.open_memmap(
        tmp_path / "kl.npy", mode="w+", dtype=np.float64, shape=(12, 12)
    )
    result = kl_matrix(L, out=out, block_size=5)
    assert result is out
    out.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "kl.npy"), kl_matrix(L))
    with pytest.raises(AnalysisError, match="shape"):
        kl_matrix(L, out=np.empty((3, 3)))


def test_non_finite_input_names_the_rows():
    L = np.zeros((5, 6))
    L[3, 1] = -np.inf
    with pytest.raises(AnalysisError, match=r"rows 3\b.*clip"):
        kl_matrix(L)
    with pytest.raises(AnalysisError, match="2-D"):
        kl_matrix(np.zeros(5))


def test_cross_distances_and_neighbors():
    rng = np.random.default_rng(9)
    X, Y = rng.normal(size=(7, 20)), rng.normal(size=(11, 20))
    expected = ((X[:, None] - Y[None]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_distances(X, Y, block_size=3), expected, rtol=1e-12)
    kl = kl_matrix(realistic_loglik(rng, 15, 40))
    indices, values = nearest_neighbors(kl, 3)
    for row in range(15):
        others = [j for j in np.argsort(kl[row], kind="stable") if j != row]
        assert list(indices[row]) == others[:3]
        np.testing.assert_array_equal(values[row], kl[row, indices[row]])
