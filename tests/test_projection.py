"""PCA maps are exact (a full SVD, not a randomized one) and the coordinates written with
``--coords`` read back as the very numbers computed."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.decomposition import PCA

from jaxmap.analysis import AnalysisError, clip, double_center
from jaxmap.analysis.projection import principal_components, project
from jaxmap.cli import main
from jaxmap.cli.analysis import _exact

MODELS, TEXTS = 40, 3000


def _close_top_eigenvalues(seed: int = 0) -> np.ndarray:
    """A column-centred 40 × 3000 Q whose two largest singular values are 100 and 99.9 (their
    eigenvalues 0.2% apart), the rest spread from 98 down to 1."""
    rng = np.random.default_rng(seed)
    # Model directions orthogonal to the all-ones vector, so that the columns have mean 0 and
    # centring leaves the spectrum as built.
    models = rng.normal(size=(MODELS, MODELS - 1))
    models, _ = np.linalg.qr(models - models.mean(axis=0))
    texts, _ = np.linalg.qr(rng.normal(size=(TEXTS, MODELS - 1)))
    singular = np.concatenate([[100.0, 99.9], np.linspace(98.0, 1.0, MODELS - 3)])
    return (models * singular) @ texts.T


def _numpy_pca(Q: np.ndarray) -> np.ndarray:
    """The first two principal coordinates from numpy's full SVD, each axis signed so that its
    largest text loading is positive."""
    u, s, vt = np.linalg.svd(Q - Q.mean(axis=0), full_matrices=False)
    signs = np.array([np.sign(vt[axis, np.argmax(np.abs(vt[axis]))]) for axis in range(2)])
    return u[:, :2] * s[:2] * signs


def test_pca_is_exact_when_the_top_eigenvalues_are_close():
    Q = _close_top_eigenvalues()
    coordinates = project(Q, "pca")
    np.testing.assert_allclose(coordinates, _numpy_pca(Q), rtol=0, atol=1e-10)
    np.testing.assert_array_equal(project(Q, "pca"), coordinates)  # the same on every run
    # What the map used before: scikit-learn's PCA picks a randomized SVD at this shape, which
    # mixes the two close axes (0.7% of the largest coordinate here).
    before = PCA(n_components=2, random_state=0).fit_transform(Q)
    assert np.abs(np.abs(before) - np.abs(coordinates)).max() > 1e-3 * np.abs(coordinates).max()


def test_tsne_starts_from_the_exact_principal_axes():
    from sklearn.manifold import TSNE

    Q = _close_top_eigenvalues()[:12, :400]
    start = _numpy_pca(Q).astype(np.float32)
    expected = TSNE(
        n_components=2, perplexity=11 / 3, init=start / np.std(start[:, 0]) * 1e-4,
        metric="sqeuclidean", method="exact", random_state=3,
    ).fit_transform(Q)
    with pytest.warns(UserWarning, match="perplexity lowered"):
        got = project(Q, "tsne", seed=3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    # At shapes where scikit-learn's own PCA is exact too, the map is the one it drew before.
    before = TSNE(
        n_components=2, perplexity=11 / 3, init="pca", metric="sqeuclidean", method="exact", random_state=3
    ).fit_transform(Q)
    np.testing.assert_allclose(got, before, rtol=0, atol=1e-3 * np.abs(before).max())


def test_principal_components_needs_two_texts():
    with pytest.raises(AnalysisError, match="2 principal axes need 2 models and texts"):
        principal_components(np.ones((5, 1)))


def test_exact_numbers_read_back_unchanged():
    values = [0.1, 1 / 3, -2.5e-300, 5e-324, 1.7976931348623157e308, -0.0, 123456789.12345679]
    assert [float(_exact(v)) for v in values] == values
    assert _exact(np.float32(0.1)) == repr(float(np.float32(0.1)))


def test_map_coords_csv_holds_the_coordinates_exactly(tmp_path):
    rng = np.random.default_rng(1)
    L = -200 + _close_top_eigenvalues() + rng.normal(scale=0.5, size=(MODELS, TEXTS))
    np.save(tmp_path / "m.npy", L)
    coords = tmp_path / "xy.csv"
    assert main(["map", str(tmp_path / "m.npy"), "--out", str(tmp_path / "m.png"), "--method", "pca", "--coords", str(coords)]) == 0
    with open(coords, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    written = np.array([[float(x), float(y)] for _, x, y in rows])
    np.testing.assert_array_equal(written, project(double_center(clip(L)[0]), "pca"))
