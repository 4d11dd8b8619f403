"""Predicting benchmark scores from model coordinates, with the papers' protocol.

RidgeCV over alphas 10^1 … 10^9 chosen by 5-fold inner cross-validation; predictions clipped to
[0, 100] (benchmark accuracies in percent); outer 5-fold KFold and GroupKFold (by model type),
each repeated with 5 seeds. For every seed the out-of-fold predictions of all models are
compared with the true scores (Pearson and Spearman); results are mean ± sd over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold, KFold

from ._arrays import AnalysisError, float64_matrix, require_finite

PAPER_ALPHAS = tuple(10.0**e for e in range(1, 10))


@dataclass(frozen=True)
class PredictionResult:
    """Out-of-fold predictions and their correlations with the targets, one row per seed."""

    scheme: str
    predictions: np.ndarray  # seeds × models
    pearson: np.ndarray
    spearman: np.ndarray

    def summary(self) -> str:
        """``Pearson m ± sd   Spearman m ± sd`` over seeds."""
        return f"Pearson {_mean_sd(self.pearson)}   Spearman {_mean_sd(self.spearman)}"


def _mean_sd(values: np.ndarray) -> str:
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {sd:.3f}"


def _out_of_fold(features, target, splits, alphas, inner_folds, value_range) -> np.ndarray:
    predictions = np.empty(len(target))
    for train, test in splits:
        if len(train) < inner_folds:
            raise AnalysisError(f"a training fold has {len(train)} models, fewer than {inner_folds} inner folds")
        model = RidgeCV(alphas=alphas, cv=inner_folds).fit(features[train], target[train])
        predictions[test] = np.clip(model.predict(features[test]), *value_range)
    return predictions


def predict_scores(
    features,
    target,
    *,
    groups=None,
    seeds: int = 5,
    folds: int = 5,
    inner_folds: int = 5,
    alphas=PAPER_ALPHAS,
    value_range: tuple[float, float] = (0.0, 100.0),
) -> dict[str, PredictionResult]:
    """Cross-validated ridge prediction of ``target`` (one score per model) from ``features``.

    ``features`` is K×F (typically Q of the scored models). Returns ``{"KFold": ...}`` and,
    when ``groups`` (one label per model, e.g. the model family) is given, also
    ``{"GroupKFold": ...}`` where no group is split between training and test folds.
    """
    features = float64_matrix(features, "features")
    target = np.asarray(target, dtype=np.float64)
    require_finite(features, "features")
    if target.shape != (features.shape[0],):
        raise AnalysisError(f"{features.shape[0]} models but {target.size} target values")
    if not np.isfinite(target).all():
        raise AnalysisError("the target has missing or non-finite values")
    if features.shape[0] < folds:
        raise AnalysisError(f"{features.shape[0]} models cannot be split into {folds} folds")
    schemes = {"KFold": lambda seed: KFold(folds, shuffle=True, random_state=seed).split(features)}
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != target.shape:
            raise AnalysisError(f"{target.size} models but {groups.size} group labels")
        n_groups = len(np.unique(groups))
        if n_groups < folds:
            raise AnalysisError(f"GroupKFold needs at least {folds} groups, found {n_groups}")
        schemes["GroupKFold"] = lambda seed: GroupKFold(folds, shuffle=True, random_state=seed).split(
            features, groups=groups
        )
    results = {}
    for name, splitter in schemes.items():
        predictions = np.stack(
            [
                _out_of_fold(features, target, splitter(seed), list(alphas), inner_folds, value_range)
                for seed in range(seeds)
            ]
        )
        results[name] = PredictionResult(
            scheme=name,
            predictions=predictions,
            pearson=np.array([pearsonr(p, target).statistic for p in predictions]),
            spearman=np.array([spearmanr(p, target).statistic for p in predictions]),
        )
    return results
