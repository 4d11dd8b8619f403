"""The KL estimate on an exactly solvable family of "models".

Texts are the M points of a finite universe; a model is an explicit distribution over them:
an exponential tilt of a base distribution p0,

    p_i(x) ∝ p0(x) · exp(ε θ_i · φ(x)),

so log p_i(x) is known exactly and so is KL(p_i, p_j) = Σ_x p_i(x) log(p_i(x)/p_j(x)).

Why the assumptions of docs/method.md hold: (1) the texts are drawn from p0 — either the whole
universe under a uniform p0 (then the column average *is* the expectation under p0, with no
sampling noise), or i.i.d. draws from a non-uniform p0; (2) every p_i is near p0, with a
nearness set by ε: ℓ_i − ℓ_j = ε(θ_i − θ_j)·φ + const, so Var_p0(ℓ_i − ℓ_j) equals
ε² Δθᵀ Cov_p0(φ) Δθ exactly, while 2·KL(p_i, p_j) equals it up to O(ε³). The relative error of
the estimate must therefore vanish linearly in ε, and that is what is checked.
"""

from __future__ import annotations

import numpy as np

from jaxmap.analysis import kl_matrix

MODELS = 8
OFF_DIAGONAL = ~np.eye(MODELS, dtype=bool)


def tilted_family(
    rng: np.random.Generator, p0: np.ndarray, epsilon: float, features: int = 3
) -> np.ndarray:
    """log p_i(x) for MODELS tilts of p0 (rows: models, columns: the M texts)."""
    phi = rng.normal(size=(len(p0), features))
    theta = rng.normal(size=(MODELS, features))
    logits = np.log(p0) + epsilon * theta @ phi.T
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def exact_kl(log_p: np.ndarray) -> np.ndarray:
    p = np.exp(log_p)
    return np.einsum("ix,ijx->ij", p, log_p[:, None, :] - log_p[None, :, :])


def relative_error(estimate: np.ndarray, exact: np.ndarray) -> float:
    return float(np.max(np.abs(estimate - exact)[OFF_DIAGONAL] / exact[OFF_DIAGONAL]))


def test_estimate_converges_to_exact_kl_as_models_approach_p0():
    universe = 1000
    p0 = np.full(universe, 1.0 / universe)
    errors = []
    for epsilon in (0.2, 0.05, 0.0125):
        log_p = tilted_family(np.random.default_rng(0), p0, epsilon)
        # The assumption "models near p0" in numbers: KL(p_i, p0) is small and shrinks as ε².
        kl_to_base = exact_kl(np.vstack([log_p, np.log(p0)]))[:MODELS, MODELS]
        assert kl_to_base.max() < 0.2
        errors.append(relative_error(kl_matrix(log_p), exact_kl(log_p)))
    assert errors[-1] < 0.005
    # O(ε) relative error: each 4× step towards p0 cuts it by about 4.
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3


def test_estimate_from_texts_sampled_from_a_non_uniform_base():
    rng = np.random.default_rng(1)
    universe, draws = 500, 20000
    p0 = np.exp(rng.normal(size=universe))
    p0 /= p0.sum()
    log_p = tilted_family(rng, p0, 0.05)
    exact = exact_kl(log_p)

    def frobenius_error(texts: np.ndarray) -> float:
        difference = (kl_matrix(log_p[:, texts]) - exact)[OFF_DIAGONAL]
        return float(np.linalg.norm(difference) / np.linalg.norm(exact[OFF_DIAGONAL]))

    from_p0 = frobenius_error(np.random.default_rng(2).choice(universe, size=draws, p=p0))
    # Sampling noise of a variance from 20,000 draws is about 1%; the O(ε) bias about the same.
    assert from_p0 < 0.03
    # The assumption matters: texts drawn from another distribution estimate something else.
    from_uniform = frobenius_error(np.random.default_rng(2).choice(universe, size=draws))
    assert from_uniform > 3 * from_p0
