"""ICA of model coordinates: known independent non-Gaussian sources are recovered from a mixture."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmap.analysis.ica import ica
from jaxmap.errors import AnalysisError


def _mixture(seed: int, texts: int = 4000, models: int = 9):
    rng = np.random.default_rng(seed)
    sources = np.stack(
        [
            rng.laplace(size=texts),
            rng.uniform(-1, 1, size=texts) * np.sqrt(3),
            rng.exponential(size=texts) - 1.0,
        ],
        axis=1,
    )
    mixing = rng.normal(size=(models, 3)) * 5
    # Per-model offsets and a little Gaussian noise: double centring removes the first.
    L = mixing @ sources.T + rng.normal(size=(models, 1)) * 100 - 300 + 0.01 * rng.normal(size=(models, texts))
    return L, sources


@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_independent_sources(seed):
    L, truth = _mixture(seed)
    result = ica(L, components=3, seed=seed)
    assert result.converged
    correlation = np.corrcoef(result.sources.T, truth.T)[:3, 3:]
    # Each true source matches one recovered axis (a permutation), up to sign.
    best = np.abs(correlation).max(axis=0)
    assert (best >= 0.95).all(), correlation
    assert sorted(np.abs(correlation).argmax(axis=0).tolist()) == [0, 1, 2]
    # Axes are ordered by non-Gaussianity, signed to positive skewness, unit variance.
    assert (np.diff(result.non_gaussianity) <= 0).all()
    assert (np.mean(result.sources**3, axis=0) >= 0).all()
    np.testing.assert_allclose(result.sources.var(axis=0), 1.0, atol=1e-6)
    assert result.explained > 0.99


def test_loadings_reconstruct_the_centred_matrix():
    from jaxmap.analysis import double_center

    L, _ = _mixture(3)
    result = ica(L, components=3)
    Q = double_center(L)
    reconstruction = result.loadings @ result.sources.T
    assert np.linalg.norm(Q - reconstruction) / np.linalg.norm(Q) < 0.01


def test_gaussian_sources_score_lower_than_non_gaussian_ones():
    rng = np.random.default_rng(5)
    texts = 4000
    sources = np.stack([rng.laplace(size=texts), rng.normal(size=texts)], axis=1)
    mixing = rng.normal(size=(6, 2))
    result = ica(mixing @ sources.T, components=2)
    laplace_axis = np.abs(np.corrcoef(result.sources.T, sources[:, 0])[-1, :2]).argmax()
    assert laplace_axis == 0  # the non-Gaussian axis comes first
    assert result.non_gaussianity[0] > 10 * result.non_gaussianity[1]


def test_square_correlation_tree_links_dependent_axes():
    rng = np.random.default_rng(2)
    texts = 6000
    scale = np.exp(rng.normal(size=texts))  # a shared variance: axes 0 and 1 are dependent
    sources = np.stack(
        [scale * rng.normal(size=texts), scale * rng.normal(size=texts), rng.uniform(-1, 1, texts) * np.sqrt(3)],
        axis=1,
    )
    sources /= sources.std(axis=0)
    result = ica(rng.normal(size=(8, 3)) @ sources.T, components=3)
    assert len(result.tree) == 2
    strongest = max(result.tree, key=lambda edge: edge[2])
    matched = [int(np.abs(np.corrcoef(result.sources.T, sources[:, i])[-1, :3]).argmax()) for i in range(3)]
    assert {strongest[0], strongest[1]} == {matched[0], matched[1]}
    weakest = min(result.tree, key=lambda edge: edge[2])
    # Independent axes' squares are uncorrelated up to sampling noise (about 1/sqrt(N)).
    assert strongest[2] > 0.1 and abs(weakest[2]) < 0.05


def test_too_many_components_is_one_clear_error():
    L, _ = _mixture(0, texts=50, models=4)
    with pytest.raises(AnalysisError, match="between 1 and 3"):
        ica(L, components=4)


def test_ica_command_writes_the_axes_table_loadings_and_tree(tmp_path):
    import csv
    import subprocess
    import sys

    L, _ = _mixture(4, texts=600, models=7)
    matrix = tmp_path / "L.npy"
    np.save(matrix, L)
    out, loadings, plot = tmp_path / "axes.csv", tmp_path / "loadings.csv", tmp_path / "tree.png"
    result = subprocess.run(
        [sys.executable, "-m", "jaxmap", "ica", str(matrix), "--components", "3", "--top", "2",
         "--out", str(out), "--loadings", str(loadings), "--plot", str(plot), "--clip-quantile", "0"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "IC3" in result.stdout and "converged" in result.stdout
    rows = list(csv.reader(out.open()))
    assert rows[0][0] == "axis" and [r[0] for r in rows[1:]] == ["IC1", "IC2", "IC3"]
    assert all(len(r[2].split()) == 2 for r in rows[1:])
    table = list(csv.reader(loadings.open()))
    assert len(table) == 8 and table[1][0] == "model_0"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run(
        [sys.executable, "-m", "jaxmap", "ica", str(matrix), "--components", "9"],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "between 1 and 6" in bad.stderr
