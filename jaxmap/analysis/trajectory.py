"""Trajectories: a sequence of models (checkpoints of one training run, or the layers of one
model read through the logit lens) as a path in the map.

Along a path of n models this computes

* the estimated KL between consecutive models and from each model to the last one, from the
  store's matrix with the map's clipping (one global 2% quantile over the whole matrix) and
  double centring (:func:`jaxmap.analysis.clip`, :func:`jaxmap.analysis.kl_matrix`), optionally
  leaving out, as the papers do for checkpoints, the texts whose log-likelihood changes most
  between consecutive models after the warm-up (:func:`top_change_texts`);
* diffusion exponents, as in the papers: for each start t0, the slope c of the least-squares
  fit ``log D(t0, t0+Δ) = c·log Δ + b`` over the next ``window`` (10) models, where D is the
  estimated KL (log-likelihood space) or the squared weight distance ``‖θ(t0+Δ) − θ(t0)‖²``
  (weight space). Near the end of the path fewer than ``window`` models follow; the fit then
  uses those there are, and a start with fewer than ``min_points`` (3) usable points gets NaN.
  c ≈ 1 is ordinary diffusion (a random walk), c < 1 sub-diffusion (a confined walk).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable, Sequence

import numpy as np

from ._arrays import AnalysisError
from .geometry import clip, kl_matrix

DEFAULT_WINDOW = 10
DEFAULT_MIN_POINTS = 3
# The papers' text filter for trajectories of checkpoints: the 3% of texts whose log-likelihood
# changes most between consecutive checkpoints after the warm-up (docs/method.md says why
# `jaxmap trajectory` uses it for checkpoints and not for logit-lens layers).
CHECKPOINT_DROP_TOP_CHANGE = 0.03


@dataclass(frozen=True)
class DiffusionFit:
    """Per start t0: the exponent c, the intercept b and the number of points fitted."""

    exponents: np.ndarray
    intercepts: np.ndarray
    points: np.ndarray


def diffusion_exponents(
    distances,
    *,
    steps: Sequence[float] | None = None,
    window: int = DEFAULT_WINDOW,
    min_points: int = DEFAULT_MIN_POINTS,
) -> DiffusionFit:
    """Fit ``log D(t0, t0+Δ) = c·log Δ + b`` for every start t0 of a path.

    ``distances`` is the n×n matrix D along the path (only the entries ``D[t0, t0+k]``,
    1 ≤ k ≤ ``window``, are read; others may be NaN). Δ is the index difference k, or the
    difference of ``steps`` (training steps of the checkpoints, increasing) when given.
    Entries that are not positive and finite (a repeated checkpoint, an unknown distance) are
    left out of the fit. Starts with fewer than ``min_points`` points get NaN.
    """
    distances = np.asarray(distances, dtype=np.float64)
    count = distances.shape[0]
    if distances.ndim != 2 or distances.shape[1] != count:
        raise AnalysisError(f"path distances must be n×n, got shape {distances.shape}")
    if window < 1 or min_points < 2:
        raise AnalysisError("the fit needs window >= 1 and min_points >= 2")
    positions = np.arange(count, dtype=np.float64) if steps is None else np.asarray(steps, np.float64)
    if positions.shape != (count,) or not np.all(np.diff(positions) > 0):
        raise AnalysisError(f"steps must be {count} strictly increasing numbers")
    exponents = np.full(count, np.nan)
    intercepts = np.full(count, np.nan)
    points = np.zeros(count, np.int64)
    for start in range(count):
        ahead = np.arange(start + 1, min(start + window, count - 1) + 1)
        values = distances[start, ahead]
        usable = np.isfinite(values) & (values > 0)
        points[start] = int(usable.sum())
        if points[start] < min_points:
            continue
        log_delta = np.log(positions[ahead[usable]] - positions[start])
        slope, intercept = np.polyfit(log_delta, np.log(values[usable]), 1)
        exponents[start], intercepts[start] = slope, intercept
    return DiffusionFit(exponents, intercepts, points)


def top_change_texts(
    rows,
    fraction: float,
    *,
    steps: Sequence[float] | None = None,
    warmup: float = 0.0,
) -> np.ndarray:
    """Column indices (ascending) of the ⌊``fraction``·N⌋ texts whose log-likelihood changes
    most along a path: the papers' filter of heavy-tailed texts before fitting exponents.

    ``rows`` is the n×N clipped log-likelihood of the path's models, in order. A text's change
    is the largest ``|ℓ[t+1, s] − ℓ[t, s]|`` over the consecutive pairs after the warm-up, those
    whose earlier model is at step ``warmup`` or later (``steps``: the models' training steps,
    by default their positions 0 … n−1). Ties go to the earlier text.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:
        raise AnalysisError(f"the path's log-likelihoods must be n×N, got shape {rows.shape}")
    if not 0.0 <= fraction < 1.0:
        raise AnalysisError(f"the fraction of texts to drop must be in [0, 1), got {fraction}")
    count, texts = rows.shape
    positions = np.arange(count, dtype=np.float64) if steps is None else np.asarray(steps, np.float64)
    if positions.shape != (count,):
        raise AnalysisError(f"steps must be {count} numbers, one per model of the path")
    if fraction == 0.0:
        return np.zeros(0, np.int64)
    after = np.flatnonzero(positions[:-1] >= warmup)
    if after.size == 0:
        raise AnalysisError(
            f"no two consecutive models of the path are at or after the warm-up (step "
            f"{warmup:g}); lower the warm-up or drop no texts"
        )
    change = np.abs(rows[after + 1] - rows[after]).max(axis=0)
    # ⌊f·N⌋ of the decimal f: in binary 0.29 · 100 is 28.999999999999996, which would keep one
    # text too many.
    drop = math.floor(Fraction(repr(float(fraction))) * texts)
    return np.sort(np.argsort(-change, kind="stable")[:drop])


def _squared_distance(a: np.ndarray, b: np.ndarray, block: int = 1 << 22) -> float:
    """‖a − b‖² of two flat float32 vectors, accumulated in float64 block by block."""
    total = 0.0
    for start in range(0, a.size, block):
        difference = a[start : start + block].astype(np.float64) - b[start : start + block]
        total += float(difference @ difference)
    return total


def flat_params(params) -> np.ndarray:
    """Every leaf of a params pytree (host arrays), flattened in a fixed order into one float32
    vector: what weight distances are measured on."""
    import jax

    leaves = jax.tree_util.tree_leaves(params)
    return np.concatenate([np.asarray(leaf, dtype=np.float32).ravel() for leaf in leaves])


def weight_distances(
    load: Callable[[int], np.ndarray] | Iterable[np.ndarray],
    count: int,
    *,
    window: int = DEFAULT_WINDOW,
) -> np.ndarray:
    """The n×n squared weight distances ``‖θ_j − θ_i‖²`` for 0 < j − i ≤ ``window`` (NaN
    elsewhere, the diagonal 0), loading each checkpoint once.

    ``load(i)`` (or the i-th item of an iterable) gives checkpoint i as one flat float32
    vector (:func:`flat_params`). At most ``window + 1`` vectors are held at once.
    """
    vectors = iter(load(i) for i in range(count)) if callable(load) else iter(load)
    distances = np.full((count, count), np.nan)
    np.fill_diagonal(distances, 0.0)
    held: deque[tuple[int, np.ndarray]] = deque(maxlen=window)
    size = None
    for index in range(count):
        vector = next(vectors)
        if size is None:
            size = vector.size
        elif vector.size != size:
            raise AnalysisError(
                f"checkpoint {index} has {vector.size} parameters, the first {size}: weight "
                "distances need checkpoints of one shape"
            )
        for earlier, previous in held:
            distances[earlier, index] = distances[index, earlier] = _squared_distance(vector, previous)
        held.append((index, vector))
    return distances


def load_flat_params(reference: str, cache_dir=None) -> np.ndarray:
    """A model's params as one flat float32 host vector, through jaxmap's checkpoint resolution
    and weight conversion (the decoder's layout, so checkpoints of one run line up)."""
    from ..checkpoints import resolve
    from ..checkpoints.translated import translated_config

    checkpoint = resolve(reference, cache_dir=cache_dir)
    architecture, config = translated_config(checkpoint)
    return flat_params(checkpoint.load_params(architecture, config, "float32"))


@dataclass(frozen=True)
class TrajectoryReport:
    """A path's KL profile and diffusion exponents, one entry per model along the path."""

    models: list[str]
    steps: np.ndarray
    kl_to_next: np.ndarray  # KL(m_t, m_t+1); NaN for the last model
    kl_to_final: np.ndarray
    loglik_fit: DiffusionFit
    weight_fit: DiffusionFit | None
    window: int
    dropped_texts: np.ndarray  # column indices of L left out of the KL (top_change_texts)

    def rows(self) -> list[dict]:
        """One dict per model: the table ``jaxmap trajectory`` prints."""
        out = []
        for t, model in enumerate(self.models):
            out.append(
                {
                    "index": t,
                    "model": model,
                    "step": float(self.steps[t]),
                    "kl_to_next": float(self.kl_to_next[t]),
                    "kl_to_final": float(self.kl_to_final[t]),
                    "exponent_loglik": float(self.loglik_fit.exponents[t]),
                    "points_loglik": int(self.loglik_fit.points[t]),
                    "exponent_weights": (
                        float(self.weight_fit.exponents[t]) if self.weight_fit else float("nan")
                    ),
                    "points_weights": int(self.weight_fit.points[t]) if self.weight_fit else 0,
                }
            )
        return out


def trajectory(
    L,
    path: Sequence[int],
    names: Sequence[str],
    *,
    steps: Sequence[float] | None = None,
    weights: Callable[[int], np.ndarray] | None = None,
    window: int = DEFAULT_WINDOW,
    min_points: int = DEFAULT_MIN_POINTS,
    text_bytes=None,
    clip_quantile: float = 0.02,
    drop_top_change: float = 0.0,
    warmup: float = 0.0,
) -> TrajectoryReport:
    """KL profile and diffusion exponents of the path ``path`` (row indices of the full matrix
    ``L``; ``names`` are all rows' names). ``weights(t)``, if given, loads the t-th model of
    the path as a flat float32 vector for the weight-space exponents. KL is in nats per text,
    or bits per byte with ``text_bytes``.

    ``L`` is clipped at its global ``clip_quantile`` (the map's τ, over every row, not only the
    path's). ``drop_top_change`` > 0 then leaves out the texts that change most between
    consecutive models from step ``warmup`` on (:func:`top_change_texts`; the papers use 0.03
    for checkpoints). It defaults to 0, keeping every text: whether to filter depends on what
    the path is (docs/method.md), which the rows alone do not say.
    """
    path = [int(i) for i in path]
    if len(path) < 2:
        raise AnalysisError(f"a trajectory needs at least 2 models, got {len(path)}")
    if len(set(path)) < len(path):
        repeated = sorted({names[i] for i in path if path.count(i) > 1})
        raise AnalysisError(f"a model appears twice in the path: {', '.join(repeated)}")
    count = len(path)
    positions = np.arange(count, dtype=np.float64) if steps is None else np.asarray(steps, np.float64)
    clipped, _ = clip(L, clip_quantile)
    rows = clipped[np.asarray(path, dtype=np.int64)]
    dropped = top_change_texts(rows, drop_top_change, steps=positions, warmup=warmup)
    kept = np.setdiff1d(np.arange(rows.shape[1]), dropped)
    if text_bytes is not None:
        text_bytes = np.asarray(text_bytes)[kept]
    # Double centring over the path's rows alone gives the same distances as over the whole
    # map: the column means cancel in q_i − q_j.
    kl = kl_matrix(rows[:, kept], text_bytes=text_bytes)
    kl_to_next = np.append(np.diag(kl, 1), np.nan)
    loglik_fit = diffusion_exponents(kl, steps=positions, window=window, min_points=min_points)
    weight_fit = None
    if weights is not None:
        weight_fit = diffusion_exponents(
            weight_distances(weights, count, window=window), steps=positions, window=window,
            min_points=min_points,
        )
    return TrajectoryReport(
        [names[i] for i in path], positions, kl_to_next, kl[:, -1].copy(), loglik_fit,
        weight_fit, window, dropped,
    )


# ---------------------------------------------------------------------------------------------
# Parents and children (base models and their fine-tunes)


@dataclass(frozen=True)
class LineageRow:
    """A child model, its parent, their estimated KL and the parent's neighbour rank."""

    child: str
    parent: str
    kl: float
    parent_rank: int  # 1: the parent is the child's nearest neighbour
    nearest: str
    nearest_kl: float
    candidates: int  # models the rank is taken among (every other model of the store)


def lineage(
    L,
    names: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    *,
    text_bytes=None,
    among: Sequence[int] | None = None,
    clip_quantile: float = 0.02,
) -> list[LineageRow]:
    """For each (parent, child) pair of row names: the child's estimated KL to its parent and
    the parent's rank among the child's neighbours (1 = nearest; ties count in the parent's
    favour), with the map's clipping over the whole matrix (at ``clip_quantile``; 0 disables).
    ``among`` (row indices) limits the neighbours ranked, e.g. to leave out logit-lens rows; by
    default every other row."""
    index = {name: i for i, name in enumerate(names)}
    missing = sorted({name for pair in pairs for name in pair if name not in index})
    if missing:
        raise AnalysisError(f"not in the store: {', '.join(missing)}")
    clipped, _ = clip(L, clip_quantile)
    kl = kl_matrix(clipped, text_bytes=text_bytes)
    rows = []
    for parent, child in pairs:
        p, c = index[parent], index[child]
        if p == c:
            raise AnalysisError(f"{child} is named as its own parent")
        eligible = np.arange(len(names)) if among is None else np.unique(np.asarray(among, np.int64))
        others = eligible[(eligible != c)]
        if p not in others:
            raise AnalysisError(f"{parent} is not among the models ranked")
        to_child = kl[c, others]
        nearest = others[int(np.argmin(to_child))]
        rank = 1 + int(np.sum(to_child < kl[c, p]))
        rows.append(
            LineageRow(child, parent, float(kl[c, p]), rank, names[nearest], float(kl[c, nearest]), len(others))
        )
    return rows


def read_base_model(directory) -> str | None:
    """The ``base_model`` of a local model directory's model card (README.md YAML front
    matter), or None. A list names the first entry."""
    from pathlib import Path

    import yaml

    card = Path(directory) / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        front = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    base = front.get("base_model") if isinstance(front, dict) else None
    if isinstance(base, list):
        base = base[0] if base else None
    return str(base) if base else None
