"""Predicting benchmark scores from model coordinates, with the papers' protocol.

RidgeCV over alphas 10^1 … 10^9 chosen by 5-fold inner cross-validation; predictions clipped to
[0, 100] (benchmark accuracies in percent); outer 5-fold KFold and GroupKFold (by model type),
each repeated with 5 seeds. For every seed the out-of-fold predictions of all models are
compared with the true scores (Pearson and Spearman); results are mean ± sd over seeds.

The ridge fits are those of ``sklearn.linear_model.RidgeCV(alphas, cv=5)`` (inner KFold without
shuffling, R² averaged over folds, the first best alpha, refit on the whole training set), but
computed from one eigendecomposition of the kernel X·Xᵀ per fold for all alphas at once:
scikit-learn refits each alpha separately and took 19.5 s per RidgeCV on 800 models × 10,000
texts on this machine, which the protocol needs 50 times per scheme. A test checks that the two
agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import pearsonr, spearmanr
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


def _ridge_predictions(X_train, y_train, X_test, alphas: np.ndarray) -> np.ndarray:
    """Ridge (with intercept) predictions on X_test for every alpha: len(alphas) × len(X_test).

    Dual form: w = Xcᵀ (Xc·Xcᵀ + αI)⁻¹ yc with Xc, yc centred on the training means.
    """
    x_mean, y_mean = X_train.mean(axis=0), y_train.mean()
    centred = X_train - x_mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred @ centred.T)
    eigenvalues = np.maximum(eigenvalues, 0.0)  # the kernel is PSD; clear rounding noise
    projected_y = eigenvectors.T @ (y_train - y_mean)
    cross = ((X_test - x_mean) @ centred.T) @ eigenvectors
    dual_weights = projected_y[None, :] / (eigenvalues[None, :] + alphas[:, None])
    return dual_weights @ cross.T + y_mean


def _r2(y_true: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """R² of each row of ``predictions``, as sklearn's r2_score (constant targets score 0 or 1)."""
    residual = ((predictions - y_true) ** 2).sum(axis=1)
    total = ((y_true - y_true.mean()) ** 2).sum()
    if total == 0:
        return np.where(residual == 0, 1.0, 0.0)
    return 1.0 - residual / total


def ridge_cv_predict(
    X_train, y_train, X_test, alphas=PAPER_ALPHAS, inner_folds: int = 5
) -> tuple[np.ndarray, float]:
    """Predictions of ``RidgeCV(alphas, cv=inner_folds)`` fitted on the training set; its alpha."""
    alphas = np.asarray(alphas, dtype=np.float64)
    if len(y_train) < inner_folds:
        raise AnalysisError(
            f"a training fold has {len(y_train)} models, fewer than {inner_folds} inner folds"
        )
    scores = np.zeros(len(alphas))
    for fit, check in KFold(inner_folds).split(X_train):
        scores += _r2(
            y_train[check], _ridge_predictions(X_train[fit], y_train[fit], X_train[check], alphas)
        )
    best = alphas[
        int(np.argmax(scores))
    ]  # argmax takes the first of tied alphas, as GridSearchCV does
    return _ridge_predictions(X_train, y_train, X_test, best[None])[0], float(best)


def _out_of_fold(features, target, splits, alphas, inner_folds, value_range) -> np.ndarray:
    predictions = np.empty(len(target))
    for train, test in splits:
        fitted, _ = ridge_cv_predict(
            features[train], target[train], features[test], alphas, inner_folds
        )
        predictions[test] = np.clip(fitted, *value_range)
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
        schemes["GroupKFold"] = lambda seed: GroupKFold(
            folds, shuffle=True, random_state=seed
        ).split(features, groups=groups)
    results = {}
    for name, splitter in schemes.items():
        predictions = np.stack(
            [
                _out_of_fold(features, target, splitter(seed), alphas, inner_folds, value_range)
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
