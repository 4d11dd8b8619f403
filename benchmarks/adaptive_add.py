"""Adding a model to a target SE (``jaxmap add --target-se``) on a synthetic map with known KL.

For each target SE: the distinct texts the sequential rule scores (mean over replicates), the
coverage of ±1.96 SE intervals for the KL to the new model's k nearest map models (the truth is
the full-text-set estimate), and the texts a fixed-size draw needs for the same error (RMS error
of the same KL equal to the target): an LS subset (``jaxmap resample --method ls``) and uniform
sampling without replacement. Writes benchmarks/results/adaptive-add-<machine>-<date>.md.

    python benchmarks/adaptive_add.py [--replicates 200] [--out PATH]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from jaxmap.analysis import clip, double_center, place_models, resample
from jaxmap.analysis.sequential import exact_kl, importance_probabilities, sequential_rounds

K, N, NEW, KNN = 100, 4000, 5, 5


def synthetic(seed: int):
    rng = np.random.default_rng(seed)
    spread = rng.gamma(2.0, 1.0, N)
    base = -rng.gamma(5, 20, N)
    latent = rng.normal(size=(K + NEW, 6))
    L = base + latent @ (rng.normal(size=(6, N)) * spread) * 0.3
    return L + rng.normal(size=(K + NEW, N)) * spread * 0.2


def _placed(L_map, tau, columns, scales, new):
    """place_models's estimate in numpy (no compilation per subset size; checked against it)."""
    w = scales**2
    d = np.maximum(new[columns], tau)[None, :] - np.maximum(L_map[:, columns], tau)
    m = (d @ w) / w.sum()
    return ((d - m[:, None]) ** 2) @ w / (2 * N)


def fixed_rmse(L_map, tau, new, truth, nearest, n, method, replicates):
    errors = []
    Q = double_center(clip(L_map)[0])
    for seed in range(replicates):
        if method == "uniform":
            columns = np.sort(np.random.default_rng(seed).choice(N, n, replace=False))
            scales = np.ones(n)
        else:
            columns, scales = resample(Q, n, method, seed)
        kl = _placed(L_map, tau, columns, scales, new)
        errors.append(kl[nearest] - truth[nearest])
    return float(np.sqrt(np.mean(np.square(errors))))


def texts_for_error(L_map, tau, new, truth, nearest, target, method, replicates):
    """Smallest fixed size (bisection on a grid) whose RMS error is ≤ target; the distinct texts."""
    low, high = 8, N
    if fixed_rmse(L_map, tau, new, truth, nearest, high, method, 3) > target:
        return None
    while high - low > max(8, low // 20):
        mid = (low + high) // 2
        if fixed_rmse(L_map, tau, new, truth, nearest, mid, method, replicates) <= target:
            high = mid
        else:
            low = mid
    if method == "uniform":
        return high
    Q = double_center(clip(L_map)[0])
    return int(np.mean([len(resample(Q, high, method, s)[0]) for s in range(replicates)]))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--targets", default="0.2,0.1,0.05,0.03")
    parser.add_argument("--out", default=f"benchmarks/results/adaptive-add-cpu-2core-{time.strftime('%Y-%m-%d')}.md")
    args = parser.parse_args()
    started = time.time()
    L = synthetic(0)
    L_map = L[:K]
    tau = clip(L_map)[1]
    columns, scales = resample(double_center(clip(L_map)[0]), 300, "ls", 0)
    expected = place_models(L_map, tau, columns, scales, L[K][columns])[0]
    assert np.allclose(_placed(L_map, tau, columns, scales, L[K]), expected, rtol=1e-9)
    p = importance_probabilities(double_center(clip(L_map)[0]), "ls")
    rows = []
    for target in [float(t) for t in args.targets.split(",")]:
        covered, texts, draws, errors, fixed_ls, fixed_uniform = [], [], [], [], [], []
        for index in range(NEW):
            new = L[K + index]
            truth = exact_kl(L_map, tau, new)
            nearest = np.argsort(truth)[:KNN]
            model_errors = []
            for replicate in range(args.replicates):
                result = sequential_rounds(
                    L_map, tau, p, lambda c: new[c], target_se=target, k=KNN, seed=replicate
                )
                covered.append(np.abs(result.kl[nearest] - truth[nearest]) <= 1.96 * result.se[nearest])
                errors.append(result.kl[nearest] - truth[nearest])
                model_errors.append(result.kl[nearest] - truth[nearest])
                texts.append(result.texts)
                draws.append(result.draws)
            # Equal error: the fixed sizes whose RMS error matches the adaptive run's measured one.
            achieved = float(np.sqrt(np.mean(np.square(model_errors))))
            fixed_ls.append(texts_for_error(L_map, tau, new, truth, nearest, achieved, "ls", 20))
            fixed_uniform.append(texts_for_error(L_map, tau, new, truth, nearest, achieved, "uniform", 20))
        errors = np.asarray(errors)
        rows.append(
            (target, np.mean(covered), np.mean(covered) * 0 + np.sqrt(np.mean(covered) * (1 - np.mean(covered)) / np.size(covered)),
             float(np.sqrt(np.mean(errors**2))), float(errors.mean()), float(errors.std() / np.sqrt(errors.size)),
             np.mean(texts), np.mean(draws), fixed_ls, fixed_uniform)
        )
        print(rows[-1], file=sys.stderr, flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    lines = [
        "# Adding a model to a target SE: synthetic map with known KL",
        "",
        f"Command: `python benchmarks/adaptive_add.py --replicates {args.replicates} --targets {args.targets}`  ",
        f"Machine: {cpu}, 2 cores, CPU only; {time.strftime('%Y-%m-%d')}; {time.time() - started:.0f} s.",
        "",
        f"Synthetic map: K = {K} models × N = {N} texts (6 latent factors, heavy-tailed per-text spread, "
        f"see `synthetic()`), {NEW} new models drawn from the same law. Known KL = the full-text-set "
        "estimate (all N texts). Sequential rule: LS probabilities with ε = 0.1 uniform share, draws "
        f"with replacement, first round 32 draws, stop when the largest SE among the k = {KNN} nearest ≤ target. "
        f"{args.replicates} replicates (seeds) per new model. Coverage and errors are over the true {KNN} nearest "
        "map models of each new model.",
        "",
        "Fixed-size baselines at equal error: for each new model, the smallest size whose RMS error "
        "(20 seeds, same KL pairs) is ≤ the RMS error the adaptive runs achieved for that model, found by bisection; `ls` = `jaxmap resample --method ls` (distinct texts of n draws), "
        "uniform = n texts without replacement. 'n/a' = not reached with all N texts.",
        "",
        "| target SE (nats/text) | coverage ±1.96 SE | RMS error | mean error (± MC se) | adaptive: texts scored | draws | fixed LS subset: texts (per new model) | fixed LS, one size for all 5 | uniform: texts (per new model) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for target, coverage, coverage_se, rmse, bias, bias_se, texts, draws, fixed_ls, fixed_uniform in rows:
        show = lambda values: ", ".join("n/a" if v is None else str(int(v)) for v in values)
        lines.append(
            f"| {target:g} | {coverage:.3f} ± {coverage_se:.3f} | {rmse:.4f} | {bias:+.4f} ± {bias_se:.4f} | "
            f"{texts:.0f} | {draws:.0f} | {show(fixed_ls)} | {show([max(fixed_ls)])} | {show(fixed_uniform)} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
