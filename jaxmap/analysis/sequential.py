"""Sequential placement: score a new model on importance-drawn texts in growing rounds until the
standard error of its KL to its nearest map models is below a target (docs/method.md,
"Adding a model to a target precision").

Draws are i.i.d. with replacement from π' = (1 − ε)·π + ε/N, π the map's LS or KL
probabilities (:func:`~jaxmap.analysis.resampling.sampling_probabilities`) and ε the defensive
share (:data:`DEFENSIVE`), which bounds every importance weight u = 1/(N·π'_s) by 1/ε. After n
draws the estimate of KL(new, j) is exactly :func:`~jaxmap.analysis.resampling.place_models` on
those draws (a text drawn c times keeps one column of scale sqrt(c/(n·π'))), plus the estimate of
its −1/n ratio bias. Its standard error is analytic: the per-draw influence terms of the ratio
estimator are z_t = ½·u_t·(d_t − m)² (in nats per text; d = clipped ℓ_new − ℓ_j, m the weighted
mean of d), so SE = sd(z)/√n. Rounds stop at the first round end with n ≥ ``min_draws`` where the
largest SE among the ``k`` nearest map models is ≤ the target (Chow–Robbins), or when every text
has been scored (the estimate is then exact, SE 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ._arrays import AnalysisError, float64_matrix
from .geometry import per_text_factor
from .resampling import place_models, sampling_probabilities

DEFENSIVE = 0.1  # share of uniform sampling mixed into π: bounds the importance weights by 1/ε
MIN_DRAWS = 32  # no stop before this many draws: an early variance estimate may be too small


def importance_probabilities(Q, method: str = "ls", defensive: float = DEFENSIVE) -> np.ndarray:
    """π' = (1 − ε)·π + ε/N for the map's double-centred ``Q`` (π from ``method``)."""
    if not 0.0 <= defensive <= 1.0:
        raise AnalysisError(f"the defensive share must lie in [0, 1], got {defensive}")
    pi = sampling_probabilities(Q, method)
    return (1.0 - defensive) * pi + defensive / len(pi)


def draw_columns(probabilities, seed: int, start: int, stop: int) -> np.ndarray:
    """Draws ``start``..``stop`` (exclusive) of the i.i.d. stream of text indices from
    ``probabilities`` for ``seed``: one stream, so a resumed run continues the same draws."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    uniforms = np.random.default_rng(seed).random(stop)[start:]
    cdf = np.cumsum(probabilities)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, uniforms, side="right"), len(cdf) - 1).astype(np.int64)


def sequential_estimate(L_map, tau: float, probabilities, draws, new_values, *, text_bytes=None):
    """KL from one new model to every map model, and its standard error, after ``draws``.

    ``draws`` (length n, with repetitions) are text indices drawn from ``probabilities``;
    ``new_values`` (length N, NaN where not scored) holds the new model's log-likelihoods.
    Returns ``(kl, se)``, two arrays of length K, in nats per text or, given ``text_bytes``,
    bits per byte. The estimate is :func:`place_models` on the draws (columns of scale
    sqrt(c/(n·π))) plus its estimated ratio bias (:func:`~jaxmap.analysis.resampling.expected_distance_bias`'s term, from the draws).
    """
    L_map = float64_matrix(L_map, "L_map")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    draws = np.asarray(draws, dtype=np.int64)
    new_values = np.asarray(new_values, dtype=np.float64)
    n_texts = L_map.shape[1]
    if len(draws) < 2:
        raise AnalysisError("a standard error needs at least 2 draws")
    if np.isnan(new_values[draws]).any():
        raise AnalysisError("the new model has no score on some drawn texts")
    n = len(draws)
    # Per-draw terms of the ratio estimator (docs/method.md): their mean is place_models on the
    # draws (the tests check it), without a compilation per number of distinct texts.
    factor = per_text_factor(n_texts, text_bytes) * n_texts  # ½ in nats per text
    u = 1.0 / (n_texts * probabilities[draws])
    d = np.maximum(new_values[draws], tau)[None, :] - np.maximum(L_map[:, draws], tau)  # K × n
    m = (d @ u) / u.sum()
    centred = (d - m[:, None]) ** 2
    z = factor * u * centred
    se = z.std(axis=1, ddof=1) / np.sqrt(n)
    bias = (factor * u * u * centred).mean(axis=1) / n
    return z.mean(axis=1) + bias, se


def exact_kl(L_map, tau: float, new_values, *, text_bytes=None) -> np.ndarray:
    """The full-text-set KL of a new model scored on every text (SE 0)."""
    n_texts = np.shape(L_map)[1]
    return place_models(
        L_map, tau, np.arange(n_texts), np.ones(n_texts), new_values, text_bytes=text_bytes
    )[0]


def nearest_se(kl, se, k: int) -> float:
    """The largest SE among the ``k`` map models nearest by estimated KL."""
    order = np.argsort(kl, kind="stable")[:k]
    return float(np.max(se[order]))


def next_total(draws: int, worst_se: float, target_se: float, min_draws: int = MIN_DRAWS) -> int:
    """Draws after the next round: the size SE ∝ 1/√n projects for the target, at least
    ``min_draws`` more and at most twice as many as now."""
    projected = int(np.ceil(draws * (worst_se / target_se) ** 2 * 1.05)) if worst_se > 0 else 0
    return int(min(2 * draws, max(draws + min_draws, projected)))


@dataclass
class SequentialState:
    """Where a sequential placement stands: every draw so far, and the rounds' summaries."""

    draws: list[int] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    reason: str | None = None  # "target" or "all texts" once finished

    @property
    def finished(self) -> bool:
        return self.reason is not None


@dataclass(frozen=True)
class SequentialResult:
    """A new model placed to a target precision: KL and SE to every map model."""

    kl: np.ndarray
    se: np.ndarray
    draws: int
    texts: int
    reason: str | None
    rounds: list[dict]


def check_target(target_se: float, k: int, n_models: int, min_draws: int = MIN_DRAWS) -> None:
    """Refuse a target, ``k`` or minimum round size that cannot work, in one line."""
    if not (np.isfinite(target_se) and target_se > 0):
        raise AnalysisError(f"the target SE must be a positive number, got {target_se}")
    if not 1 <= k <= n_models:
        raise AnalysisError(f"k = {k} nearest map models, but the map has {n_models}")
    if min_draws < 2:
        raise AnalysisError(f"the minimum number of draws must be at least 2, got {min_draws}")


def sequential_rounds(
    L_map,
    tau: float,
    probabilities,
    score: Callable[[np.ndarray], np.ndarray],
    *,
    target_se: float,
    k: int = 5,
    seed: int = 0,
    min_draws: int = MIN_DRAWS,
    text_bytes=None,
    state: SequentialState | None = None,
    values=None,
    on_round: Callable[[SequentialState, np.ndarray], None] | None = None,
    max_rounds: int | None = None,
) -> SequentialResult:
    """Draw, score and estimate in rounds until the SE of the KL to the ``k`` nearest map
    models is ≤ ``target_se`` (with at least ``min_draws`` draws) or every text is scored.

    ``score(columns)`` returns the new model's log-likelihoods on the map's texts ``columns``
    (each asked for once). ``state`` and ``values`` (length N, NaN where not scored) resume an
    earlier run; ``on_round(state, values)`` is called after each round (to save them).
    ``max_rounds`` stops after that many rounds of this call, unfinished.
    """
    L_map = float64_matrix(L_map, "L_map")
    n_models, n_texts = L_map.shape
    check_target(target_se, k, n_models, min_draws)
    state = state if state is not None else SequentialState()
    values = np.full(n_texts, np.nan) if values is None else np.array(values, dtype=np.float64)
    rounds_done = 0
    kl = se = None
    while True:
        known = ~np.isnan(values)
        if known.all():
            kl, se = exact_kl(L_map, tau, values, text_bytes=text_bytes), np.zeros(n_models)
            state.reason = "all texts"
        elif len(state.draws) >= 2 and np.isnan(values[state.draws]).sum() == 0:
            kl, se = sequential_estimate(
                L_map, tau, probabilities, state.draws, values, text_bytes=text_bytes
            )
            worst = nearest_se(kl, se, k)
            if len(state.draws) >= min_draws and worst <= target_se:
                state.reason = "target"
        if state.finished or (max_rounds is not None and rounds_done >= max_rounds):
            break
        n = len(state.draws)
        total = min_draws if n == 0 else next_total(n, nearest_se(kl, se, k), target_se, min_draws)
        new_draws = draw_columns(probabilities, seed, n, total)
        wanted = np.setdiff1d(np.unique(new_draws), np.flatnonzero(known))
        if len(wanted):
            values[wanted] = np.asarray(score(wanted), dtype=np.float64)
        state.draws.extend(int(c) for c in new_draws)
        kl, se = sequential_estimate(
            L_map, tau, probabilities, state.draws, values, text_bytes=text_bytes
        )
        state.rounds.append(
            {
                "draws": len(state.draws),
                "texts": int((~np.isnan(values)).sum()),
                "new_texts": [int(c) for c in wanted],
                "nearest_se": nearest_se(kl, se, k),
            }
        )
        rounds_done += 1
        if on_round is not None:
            on_round(state, values)
    return SequentialResult(
        kl=kl,
        se=se,
        draws=len(state.draws),
        texts=int((~np.isnan(values)).sum()),
        reason=state.reason,
        rounds=state.rounds,
    )
