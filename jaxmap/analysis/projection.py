"""Two-dimensional maps of the model coordinates: t-SNE (the papers' default), PCA, MDS."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
from sklearn.manifold import MDS, TSNE

from ._arrays import AnalysisError, float64_matrix, require_finite
from .geometry import squared_distances

PROJECTIONS = ("tsne", "pca", "mds")
_EXACT_TSNE_MAX_MODELS = 500


def effective_perplexity(n_models: int, perplexity: float) -> float:
    """``perplexity``, lowered to (K − 1)/3 for small K, the largest the t-SNE kernel supports."""
    return float(min(perplexity, max((n_models - 1) / 3.0, 1.0)))


def principal_components(Q, count: int = 2) -> np.ndarray:
    """The K×``count`` coordinates of the rows of Q on their first principal axes, from a full
    SVD of the column-centred Q.

    A randomized SVD (what scikit-learn's PCA picks at shapes like 40 × 3000) mixes two axes
    whose eigenvalues are close, by 0.8–3.1% there; a map must not depend on a random draw. Signs
    follow scikit-learn's convention, so maps drawn before keep their orientation: each axis
    points so that its largest text loading (in absolute value) is positive.
    """
    Q = float64_matrix(Q, "Q")
    if min(Q.shape) < count:
        raise AnalysisError(f"{count} principal axes need {count} models and texts, got shape {Q.shape}")
    centred = Q - Q.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = np.arange(count)
    signs = np.sign(vt[axes, np.argmax(np.abs(vt[:count]), axis=1)])
    return u[:, :count] * (s[:count] * signs)


def project(Q, method: str = "tsne", *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """K×2 map coordinates of the rows of Q.

    ``"tsne"``: the papers' settings (perplexity 30, PCA initialisation from the exact principal
    axes, squared-Euclidean distances between rows of Q; the exact gradient up to 500 models, Barnes-Hut beyond).
    ``"pca"``: the first two principal components, exact (:func:`principal_components`).
    ``"mds"``: metric MDS (SMACOF) on the Euclidean distances ‖q_i − q_j‖, started from
    classical MDS. Small K lowers the perplexity (see :func:`effective_perplexity`) with a warning.
    """
    if method not in PROJECTIONS:
        raise AnalysisError(
            f"unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}"
        )
    Q = float64_matrix(Q, "Q")
    require_finite(Q, "Q")
    n_models = Q.shape[0]
    if n_models < 3:
        raise AnalysisError(f"a map needs at least 3 models, got {n_models}")
    if method == "pca":
        return principal_components(Q)
    if method == "tsne":
        used = effective_perplexity(n_models, perplexity)
        if used < perplexity:
            warnings.warn(
                f"t-SNE perplexity lowered from {perplexity:g} to {used:g} for {n_models} models",
                stacklevel=2,
            )
        start = principal_components(Q).astype(np.float32)
        tsne = TSNE(
            n_components=2,
            perplexity=used,
            # scikit-learn's init="pca" at the exact principal axes (its own may take a randomized
            # SVD), scaled as it scales its own: the first axis to standard deviation 1e-4.
            init=start / np.std(start[:, 0]) * 1e-4,
            metric="sqeuclidean",
            # Barnes-Hut approximates the gradient to scale to many models; below a few hundred
            # the exact gradient is both exact and faster (measured 2-15x on 12-500 models).
            method="exact" if n_models <= _EXACT_TSNE_MAX_MODELS else "barnes_hut",
            random_state=seed,
        )
        return tsne.fit_transform(Q)
    distances = np.sqrt(squared_distances(Q))
    # scikit-learn 1.8 renamed MDS's options ("dissimilarity" became "metric").
    if "metric_mds" in inspect.signature(MDS).parameters:
        mds = MDS(n_components=2, metric="precomputed", init="classical_mds", random_state=seed)
    else:
        mds = MDS(n_components=2, dissimilarity="precomputed", n_init=4, random_state=seed)
    return mds.fit_transform(distances)
