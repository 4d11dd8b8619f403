"""Bootstrap ellipses of the map: they shrink as the text set grows, and they are centred on the
full map's positions after Procrustes alignment."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmap.analysis.uncertainty import _procrustes, bootstrap_map
from jaxmap.errors import AnalysisError


def synthetic_matrix(texts: int, seed: int = 0, models: int = 8) -> np.ndarray:
    """Models at fixed latent positions; each text responds to the latent axes with its own
    random features, plus model-specific noise."""
    rng = np.random.default_rng(seed)
    latent = np.random.default_rng(100).normal(size=(models, 3)) * [3.0, 2.0, 0.5]
    features = rng.normal(size=(3, texts))
    return latent @ features + rng.normal(size=(models, texts)) - 150.0


def test_ellipses_shrink_as_texts_grow():
    small = bootstrap_map(synthetic_matrix(200), replicates=60, seed=1)
    large = bootstrap_map(synthetic_matrix(3200), replicates=60, seed=1)
    ratio = np.median(small.area) / np.median(large.area)
    # Variance of positions falls like 1/N, so areas by about 16x for 16x the texts.
    assert 6 < ratio < 40, ratio
    assert large.neighbor_stability.mean() >= small.neighbor_stability.mean()


def test_replicates_are_aligned_to_the_full_map():
    result = bootstrap_map(synthetic_matrix(800), replicates=40, seed=2)
    spread = np.linalg.norm(result.center.std(axis=0))
    drift = np.abs(result.replicates.mean(axis=0) - result.center).max()
    assert drift < 0.1 * spread
    assert result.ellipse_axes.shape == (8, 2)
    assert (result.ellipse_axes[:, 0] >= result.ellipse_axes[:, 1]).all()
    # The 95% ellipse holds about 95% of the replicates of a model (Gaussian enough here).
    inside = []
    for model in range(8):
        offsets = result.replicates[:, model] - result.replicates[:, model].mean(axis=0)
        mahalanobis = np.einsum("bi,ij,bj->b", offsets, np.linalg.inv(result.covariance[model]), offsets)
        inside.append(np.mean(mahalanobis <= -2 * np.log(0.05)))
    assert 0.85 <= np.mean(inside) <= 1.0


def test_procrustes_undoes_a_rotation_reflection_and_shift():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(10, 2))
    angle = 1.1
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (target @ rotation) * [1, -1] + [5.0, -2.0]
    np.testing.assert_allclose(_procrustes(moved, target), target, atol=1e-12)


@pytest.mark.parametrize(
    "shape, replicates, message",
    [((2, 10), 10, "at least 3 models"), ((4, 1), 10, "at least 2 texts"), ((4, 10), 1, "at least 2 bootstrap")],
)
def test_bad_inputs_are_one_clear_error(shape, replicates, message):
    with pytest.raises(AnalysisError, match=message):
        bootstrap_map(np.zeros(shape) - 1.0, replicates=replicates)


def test_uncertainty_command_writes_image_and_table(tmp_path):
    import csv
    import subprocess
    import sys

    matrix = tmp_path / "L.npy"
    np.save(matrix, synthetic_matrix(300))
    image, table = tmp_path / "u.png", tmp_path / "u.csv"
    result = subprocess.run(
        [sys.executable, "-m", "jaxmap", "uncertainty", str(matrix), "--out", str(image),
         "--csv", str(table), "--bootstrap", "20"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 8 and all(float(r["area"]) > 0 for r in rows)
    assert all(0.0 <= float(r["nearest_kept"]) <= 1.0 for r in rows)
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
