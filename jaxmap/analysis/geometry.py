"""Model coordinates and KL estimates from a log-likelihood matrix (docs/method.md).

Precision. Log-likelihoods are hundreds to thousands of nats, while the KL between neighbouring
checkpoints can be a millionth of that, so all of this runs in float64. JAX's x64 mode is
switched on only inside these functions (``jax.enable_x64`` is a context, local to the calling
thread), so a caller's float32 default is left alone.

Squared distances use the Gram expansion ‖a‖² + ‖b‖² − 2a·b, which runs at matrix-multiply
speed but loses relative accuracy when ‖a − b‖² ≪ ‖a‖² + ‖b‖² (two close models far from the
centroid). Such pairs are detected and recomputed directly as Σ(a − b)², so every entry is
accurate to about 1e-8 relative, whatever the geometry.

Memory. The K×K output is filled block by block; besides the caller's L and the output, the
only large buffer is one float64 copy of the centred matrix (L's device copy is donated to it).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._arrays import AnalysisError, float64_matrix, raise_non_finite

DEFAULT_BLOCK_SIZE = 2048

# A pair is recomputed directly when d < _CANCELLATION · (‖a‖² + ‖b‖²). The Gram expansion's
# absolute error grows like √N · 1.1e-16 · (‖a‖² + ‖b‖²) (float64 rounding in the dot
# products), so pairs left on the fast path keep a relative error near 1e-8 for N = 10,000
# texts and near 1e-7 for N = 1e6.
_CANCELLATION = 1e-6
# Pairs recomputed per call (padded to this size so that one compilation serves all calls).
_REFINE_CHUNK = 256


def clip(L, q: float = 0.02) -> tuple[np.ndarray, float]:
    """Clip log-likelihoods from below at one global quantile, as the papers do.

    Returns ``(max(L, tau), tau)`` with ``tau = quantile(L, q)`` over every entry of the matrix
    (numpy's default linear interpolation). Models added later to the map must be clipped with
    this ``tau``. ``q = 0`` leaves finite matrices unchanged.
    """
    if not 0.0 <= q < 1.0:
        raise AnalysisError(f"clip quantile must be in [0, 1), got {q}")
    L = float64_matrix(L)
    if np.isnan(L).any():
        raise_non_finite(L, "L")
    # A quantile is a selection problem: numpy's introselect is O(KN), whereas XLA offers only
    # a full sort (measured 37× slower on 2e7 entries), so this step stays in numpy.
    with np.errstate(invalid="ignore"):  # interpolating between -inf entries warns; checked next
        tau = float(np.quantile(L, q))
    if not np.isfinite(tau):
        infinite = int(np.isinf(L).sum())
        raise AnalysisError(
            f"L has {infinite} infinite entries ({infinite / L.size:.2%}), more than the clip "
            f"quantile {q:g} removes; raise the clip quantile"
        )
    return np.maximum(L, tau), tau


@jax.jit
def _row_and_column_means(L: jax.Array) -> tuple[jax.Array, jax.Array]:
    # Matrix-vector products read L once without copying it; XLA's axis-0 reduction made a
    # full copy of L and was several times slower (measured on 8,000 × 10,000).
    n_models, n_texts = L.shape
    row_means = jnp.matmul(L, jnp.full(n_texts, 1.0 / n_texts), precision=lax.Precision.HIGHEST)
    column_means = jnp.matmul(jnp.full(n_models, 1.0 / n_models), L, precision=lax.Precision.HIGHEST)
    return row_means, column_means


@partial(jax.jit, donate_argnums=0)
def _subtract_means(L: jax.Array, row_means: jax.Array, column_means: jax.Array) -> jax.Array:
    # ξ = ℓ − rowmean has column means (column mean of ℓ) − (grand mean).
    return (L - row_means[:, None]) - (column_means - jnp.mean(row_means))[None, :]


def _double_center_on_device(L: np.ndarray) -> jax.Array:
    """Q on the device, float64. Call inside ``jax.enable_x64(True)``."""
    # device_put gives a private copy, so donating it (Q overwrites it) cannot touch the
    # caller's array: the only large allocation is this one copy.
    L_device = jax.device_put(L)
    row_means, column_means = _row_and_column_means(L_device)
    if not np.isfinite(np.asarray(row_means)).all():  # any NaN or ±inf reaches its row's mean
        raise_non_finite(L, "L")
    return _subtract_means(L_device, row_means, column_means)


def double_center(L) -> np.ndarray:
    """The model coordinates Q: subtract each row's mean, then each column's mean.

    ``L`` is K×N (models × texts), numpy or JAX; the result is a float64 numpy array. It is
    a read-only view of the result buffer (no second copy of a large matrix): copy it to edit.
    """
    L = float64_matrix(L)
    with jax.enable_x64(True):
        return np.asarray(_double_center_on_device(L))


@jax.jit
def _row_sq_norms(X: jax.Array) -> jax.Array:
    return jnp.sum(X * X, axis=1)


@partial(jax.jit, static_argnames=("rows", "cols"))
def _distance_block(
    X: jax.Array,
    Y: jax.Array,
    x_norms: jax.Array,
    y_norms: jax.Array,
    row_start: jax.Array,
    col_start: jax.Array,
    rows: int,
    cols: int,
) -> tuple[jax.Array, jax.Array]:
    a = lax.dynamic_slice_in_dim(X, row_start, rows)
    b = lax.dynamic_slice_in_dim(Y, col_start, cols)
    scale = (
        lax.dynamic_slice_in_dim(x_norms, row_start, rows)[:, None]
        + lax.dynamic_slice_in_dim(y_norms, col_start, cols)[None, :]
    )
    gram = jnp.matmul(a, b.T, precision=lax.Precision.HIGHEST)
    distances = jnp.maximum(scale - 2.0 * gram, 0.0)
    return distances, distances < _CANCELLATION * scale


@jax.jit
def _direct_sq_distances(X: jax.Array, Y: jax.Array, rows: jax.Array, cols: jax.Array):
    difference = X[rows] - Y[cols]
    return jnp.sum(difference * difference, axis=1)


def _refine(X: jax.Array, Y: jax.Array, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Σ(x_r − y_c)² for the given pairs, computed without cancellation."""
    values = np.empty(len(rows))
    for start in range(0, len(rows), _REFINE_CHUNK):
        stop = min(start + _REFINE_CHUNK, len(rows))
        padded_rows = np.zeros(_REFINE_CHUNK, np.int64)
        padded_cols = np.zeros(_REFINE_CHUNK, np.int64)
        padded_rows[: stop - start] = rows[start:stop]
        padded_cols[: stop - start] = cols[start:stop]
        chunk = _direct_sq_distances(X, Y, padded_rows, padded_cols)
        values[start:stop] = np.asarray(chunk)[: stop - start]
    return values


def _block_starts(total: int, size: int) -> list[tuple[int, int, int]]:
    """(start, stop, slice_start) per block; the last slice is shifted back to stay in range."""
    return [
        (start, min(start + size, total), min(start, total - size))
        for start in range(0, total, size)
    ]


def _fill_sq_distances(
    X: jax.Array,
    Y: jax.Array | None,
    out: np.ndarray,
    factor: float,
    block_size: int,
    progress: bool,
) -> np.ndarray:
    """Write factor·‖x_i − y_j‖² into ``out``; ``Y is None`` means Y = X (symmetric output)."""
    if block_size < 1:
        raise AnalysisError(f"block_size must be positive, got {block_size}")
    symmetric = Y is None
    Y = X if symmetric else Y
    x_norms = _row_sq_norms(X)
    y_norms = x_norms if symmetric else _row_sq_norms(Y)
    rows_per_block = min(block_size, X.shape[0])
    cols_per_block = min(block_size, Y.shape[0])
    row_blocks = _block_starts(X.shape[0], rows_per_block)
    col_blocks = _block_starts(Y.shape[0], cols_per_block)
    tasks = [
        (i, j)
        for i in range(len(row_blocks))
        for j in range(i if symmetric else 0, len(col_blocks))
    ]
    if progress:
        from tqdm.auto import tqdm

        tasks = tqdm(tasks, desc="distance blocks", unit="block")
    for i, j in tasks:
        r0, r1, row_slice = row_blocks[i]
        c0, c1, col_slice = col_blocks[j]
        distances, close = _distance_block(
            X, Y, x_norms, y_norms, row_slice, col_slice, rows_per_block, cols_per_block
        )
        keep = (slice(r0 - row_slice, r1 - row_slice), slice(c0 - col_slice, c1 - col_slice))
        block = np.array(np.asarray(distances)[keep])
        close = np.asarray(close)[keep]
        on_diagonal = symmetric and i == j
        if on_diagonal:
            close = np.triu(close, k=1)
        pair_rows, pair_cols = np.nonzero(close)
        if len(pair_rows):
            block[pair_rows, pair_cols] = _refine(X, Y, pair_rows + r0, pair_cols + c0)
        block *= factor
        if on_diagonal:
            # Mirror the upper triangle: exactly symmetric, exactly zero on the diagonal.
            block = np.triu(block, k=1)
            block += block.T
        out[r0:r1, c0:c1] = block
        if symmetric and not on_diagonal:
            out[c0:c1, r0:r1] = block.T
    return out


def _output(out: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if out is None:
        return np.empty(shape, np.float64)
    if out.shape != shape or out.dtype != np.float64:
        raise AnalysisError(
            f"out must be a float64 array of shape {shape}, got {out.dtype} {out.shape}"
        )
    return out


def squared_distances(
    X,
    Y=None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    out: np.ndarray | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Squared Euclidean distances ‖x_i − y_j‖² between rows, in float64.

    With ``Y=None`` the result is the K×K matrix of X against itself, exactly symmetric with an
    exactly zero diagonal. ``out`` may be a preallocated float64 array (an ``np.memmap`` keeps
    memory bounded for very large K); it is filled and returned.
    """
    X = float64_matrix(X, "X")
    if Y is not None:
        Y = float64_matrix(Y, "Y")
        if Y.shape[1] != X.shape[1]:
            raise AnalysisError(f"X has {X.shape[1]} columns but Y has {Y.shape[1]}")
    for matrix, name in ((X, "X"), (Y, "Y")):
        if matrix is not None and not np.isfinite(matrix).all():
            raise_non_finite(matrix, name)
    shape = (X.shape[0], X.shape[0] if Y is None else Y.shape[0])
    out = _output(out, shape)
    with jax.enable_x64(True):
        Y_device = None if Y is None else jax.device_put(Y)
        return _fill_sq_distances(jax.device_put(X), Y_device, out, 1.0, block_size, progress)


def per_text_factor(n_texts: int, text_bytes=None) -> float:
    """The factor turning ‖q_i − q_j‖² into KL: nats per text, or bits per byte."""
    factor = 1.0 / (2.0 * n_texts)
    if text_bytes is None:
        return factor
    text_bytes = np.asarray(text_bytes, dtype=np.float64)
    if text_bytes.shape != (n_texts,):
        raise AnalysisError(f"text_bytes has shape {text_bytes.shape}, expected ({n_texts},)")
    mean_bytes = float(text_bytes.mean())
    if not mean_bytes > 0:
        raise AnalysisError("text_bytes must have a positive mean to convert to bits per byte")
    return factor / (mean_bytes * np.log(2.0))


def kl_matrix(
    L,
    *,
    text_bytes=None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    out: np.ndarray | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Estimated KL divergence between every pair of models (docs/method.md).

    ``KL_ij ≈ ‖q_i − q_j‖² / (2N)`` nats per text, where Q = ``double_center(L)``. With
    ``text_bytes`` (the UTF-8 length of each of the N texts) the result is in bits per byte:
    ``KL / (mean bytes · ln 2)``. The result is K×K float64, exactly symmetric, with a zero
    diagonal. ``L`` is used as given: clip it first (:func:`clip`) as the papers do.

    Memory is bounded by blocks of ``block_size`` models; pass ``out`` (e.g. an
    ``np.lib.format.open_memmap``) to keep the K×K result on disk.
    """
    L = float64_matrix(L)
    factor = per_text_factor(L.shape[1], text_bytes)
    out = _output(out, (L.shape[0], L.shape[0]))
    with jax.enable_x64(True):
        Q = _double_center_on_device(L)
        return _fill_sq_distances(Q, None, out, factor, block_size, progress)


def nearest_neighbors(
    kl: np.ndarray, k: int, *, rows_per_chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other models of each row of a K×K divergence matrix.

    Returns ``(indices, values)``, both K×min(k, K−1), nearest first. Rows are processed in
    chunks, so a K×K matrix on disk (``np.memmap``) is never loaded whole.
    """
    if kl.ndim != 2 or kl.shape[0] != kl.shape[1]:
        raise AnalysisError(f"expected a square divergence matrix, got shape {kl.shape}")
    if k < 1:
        raise AnalysisError(f"the number of neighbours must be positive, got {k}")
    size = kl.shape[0]
    k = min(k, size - 1)
    indices = np.empty((size, k), np.int64)
    values = np.empty((size, k), np.float64)
    for start in range(0, size, rows_per_chunk):
        stop = min(start + rows_per_chunk, size)
        chunk = np.array(kl[start:stop], dtype=np.float64)
        chunk[np.arange(stop - start), np.arange(start, stop)] = (
            np.inf
        )  # a model is not its own neighbour
        nearest = np.argpartition(chunk, k - 1, axis=1)[:, :k]
        nearest_values = np.take_along_axis(chunk, nearest, axis=1)
        order = np.argsort(nearest_values, axis=1, kind="stable")
        indices[start:stop] = np.take_along_axis(nearest, order, axis=1)
        values[start:stop] = np.take_along_axis(nearest_values, order, axis=1)
    return indices, values
