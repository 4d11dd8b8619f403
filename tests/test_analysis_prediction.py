"""Benchmark prediction with the papers' RidgeCV protocol, on synthetic models."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn.linear_model import RidgeCV

from jaxmap.analysis import AnalysisError, double_center, predict_scores
from jaxmap.analysis.prediction import PAPER_ALPHAS, ridge_cv_predict


def synthetic_models(
    rng: np.random.Generator, models: int = 60, texts: int = 300, families: int = 6
):
    """Log-likelihoods driven by a latent ability (which sets the score) and a family offset."""
    ability = rng.normal(size=models)
    family = rng.integers(0, families, size=models)
    ability_texts = rng.normal(size=texts)
    family_texts = rng.normal(size=(families, texts))
    loglik = (
        -rng.uniform(200, 800, texts)
        + np.outer(ability, ability_texts)
        + family_texts[family]
        + rng.normal(0, 0.3, (models, texts))
    )
    score = np.clip(60 + 20 * ability + rng.normal(0, 3, models), 0, 100)
    return loglik, score, family


@pytest.mark.parametrize(
    "models, features, signal", [(40, 300, 1.0), (40, 300, 0.01), (60, 20, 0.3), (33, 1000, 0.1)]
)
def test_ridge_cv_equals_sklearn_ridgecv(models, features, signal):
    rng = np.random.default_rng(models + features)
    X = rng.normal(size=(models, features)) * rng.lognormal(0, 1, features)
    y = 50 + signal * X @ rng.normal(size=features) + rng.normal(0, 2, models)
    X_test = rng.normal(size=(9, features))
    reference = RidgeCV(alphas=PAPER_ALPHAS, cv=5).fit(X, y)
    predictions, alpha = ridge_cv_predict(X, y, X_test)
    assert alpha == reference.alpha_
    np.testing.assert_allclose(predictions, reference.predict(X_test), rtol=1e-9, atol=1e-9)


def test_scores_are_predicted_under_kfold_and_groupkfold():
    loglik, score, family = synthetic_models(np.random.default_rng(0))
    results = predict_scores(double_center(loglik), score, groups=family)
    assert set(results) == {"KFold", "GroupKFold"}
    for result in results.values():
        assert result.predictions.shape == (5, len(score))
        assert result.predictions.min() >= 0 and result.predictions.max() <= 100
        assert result.pearson.shape == result.spearman.shape == (5,)
        assert result.pearson.mean() > 0.8 and result.spearman.mean() > 0.8
        assert "±" in result.summary()
    # Seeds reshuffle the folds, so the out-of-fold predictions differ between seeds.
    assert not np.allclose(results["KFold"].predictions[0], results["KFold"].predictions[1])
    again = predict_scores(double_center(loglik), score, groups=family)
    np.testing.assert_array_equal(
        again["GroupKFold"].predictions, results["GroupKFold"].predictions
    )


def test_unrelated_scores_are_not_predicted():
    loglik, score, _ = synthetic_models(np.random.default_rng(1))
    shuffled = np.random.default_rng(2).permutation(score)
    result = predict_scores(double_center(loglik), shuffled, seeds=3)["KFold"]
    assert abs(result.pearson.mean()) < 0.35


def test_bad_inputs_are_refused():
    loglik, score, family = synthetic_models(np.random.default_rng(3), models=20)
    Q = double_center(loglik)
    with pytest.raises(AnalysisError, match="at least 5 groups"):
        predict_scores(Q, score, groups=family % 3)
    with pytest.raises(AnalysisError, match="target"):
        predict_scores(Q, np.where(np.arange(20) == 4, np.nan, score))
    with pytest.raises(AnalysisError, match="20 models but 19"):
        predict_scores(Q, score[:-1])
