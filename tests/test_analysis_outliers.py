"""Leakage signal: texts one model finds far more likely than its nearest models predict."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmap.analysis import AnalysisError, text_outliers


def family_loglik(
    rng: np.random.Generator, families: int = 4, per_family: int = 6, texts: int = 400
) -> np.ndarray:
    difficulty = -rng.uniform(200, 1500, texts)
    rows = []
    for _ in range(families):
        family = difficulty + rng.normal(0, 8, texts)
        rows.extend(family + rng.normal(0, 1.0, texts) for _ in range(per_family))
    return np.array(rows)


def test_memorised_texts_rank_first():
    rng = np.random.default_rng(0)
    L = family_loglik(rng)
    leaked = [17, 123, 301]
    L[8, leaked] += 12.0  # model 8 saw these texts in training
    found = text_outliers(L, 8, neighbors=5)
    assert set(found.top(3)) == set(leaked)
    assert np.all(found.z[leaked] > 6)
    assert set(found.neighbors) <= set(range(6, 12))  # its own family predicts it
    np.testing.assert_allclose(np.median(found.residual), 0, atol=0.5)
    # A sibling that did not see them shows no excess on them.
    assert not set(text_outliers(L, 9, neighbors=5).top(3)) & set(leaked)


def test_bad_arguments():
    L = family_loglik(np.random.default_rng(1), families=1, per_family=3, texts=20)
    with pytest.raises(AnalysisError, match="outside"):
        text_outliers(L, 3)
    with pytest.raises(AnalysisError, match="other model"):
        text_outliers(L[:1], 0)
