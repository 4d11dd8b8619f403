"""Trajectories: diffusion exponents recover known exponents on synthetic paths; the KL profile;
weight distances streamed from checkpoints; ``jaxmap trajectory`` and ``jaxmap lineage`` end to
end on a store of tiny checkpoints."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import jaxmap
from jaxmap.analysis import AnalysisError, clip, kl_matrix
from jaxmap.analysis.trajectory import (
    diffusion_exponents,
    lineage,
    read_base_model,
    top_change_texts,
    trajectory,
    weight_distances,
)
from jaxmap.cli import main

from conftest import TEXTS, save_random_model, tiny_llama_config

# A random walk has c = 1 exactly in expectation; the fit's spread over starts comes from the
# walk's own randomness (dimension 4000: a few percent).
EXPONENT_TOLERANCE = 0.05


def _squared_distance_matrix(points: np.ndarray) -> np.ndarray:
    gram = points @ points.T
    norms = np.diag(gram)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)


def test_exact_power_law_is_recovered():
    count = 30
    delta = np.abs(np.subtract.outer(np.arange(count), np.arange(count))).astype(float)
    fit = diffusion_exponents(3.0 * delta**0.5)
    finite = np.isfinite(fit.exponents)
    np.testing.assert_allclose(fit.exponents[finite], 0.5, atol=1e-10)
    np.testing.assert_allclose(fit.intercepts[finite], np.log(3.0), atol=1e-10)
    # Δ from training steps: D = Δsteps^0.7 on unevenly spaced checkpoints.
    steps = np.cumsum(np.arange(1, count + 1)) * 10.0
    fit = diffusion_exponents(np.abs(np.subtract.outer(steps, steps)) ** 0.7, steps=steps)
    np.testing.assert_allclose(fit.exponents[np.isfinite(fit.exponents)], 0.7, atol=1e-10)


def test_fewer_points_at_the_end_of_the_path():
    count = 15
    delta = np.abs(np.subtract.outer(np.arange(count), np.arange(count))).astype(float)
    fit = diffusion_exponents(delta, window=10, min_points=3)
    # Start t0 is fitted over min(10, n-1-t0) points; below 3 there is no exponent.
    np.testing.assert_array_equal(fit.points, np.minimum(10, count - 1 - np.arange(count)))
    assert np.isnan(fit.exponents[-3:]).all() and np.isfinite(fit.exponents[:-3]).all()
    # A repeated checkpoint (D = 0) is left out of the fit rather than giving log 0.
    delta[0, 1] = 0.0
    assert diffusion_exponents(delta).points[0] == 9


def test_random_walk_exponent_is_one():
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(size=(60, 4000)), axis=0)
    fit = diffusion_exponents(_squared_distance_matrix(walk))
    exponents = fit.exponents[np.isfinite(fit.exponents)]
    print(f"random walk: median c = {np.median(exponents):.4f}, range {exponents.min():.3f}..{exponents.max():.3f}")
    assert abs(np.median(exponents) - 1.0) < EXPONENT_TOLERANCE


def _ornstein_uhlenbeck(rng, steps: int, dimension: int, theta: float) -> np.ndarray:
    """x_{t+1} = (1 − θ)·x_t + ε_t, started from its stationary law."""
    x = rng.normal(size=dimension) / np.sqrt(1 - (1 - theta) ** 2)
    path = [x]
    for _ in range(steps - 1):
        x = (1 - theta) * x + rng.normal(size=dimension)
        path.append(x)
    return np.array(path)


def test_confined_walk_is_subdiffusive_with_its_known_exponent():
    theta, window = 0.2, 10
    rng = np.random.default_rng(1)
    path = _ornstein_uhlenbeck(rng, 60, 4000, theta)
    fit = diffusion_exponents(_squared_distance_matrix(path), window=window)
    # E D(Δ) ∝ 1 − (1 − θ)^Δ: the exponent a noise-free fit over Δ = 1..10 would give.
    deltas = np.arange(1, window + 1)
    expected = np.polyfit(np.log(deltas), np.log(1 - (1 - theta) ** deltas), 1)[0]
    exponents = fit.exponents[np.isfinite(fit.exponents)]
    print(f"Ornstein-Uhlenbeck θ={theta}: expected c = {expected:.4f}, median fitted {np.median(exponents):.4f}")
    assert expected < 0.8
    assert abs(np.median(exponents) - expected) < EXPONENT_TOLERANCE


def test_trajectory_on_a_loglik_matrix_with_the_maps_clipping():
    rng = np.random.default_rng(2)
    # Rows of L on a random walk (texts as coordinates), plus unrelated models in the map.
    walk = -200 + np.cumsum(rng.normal(scale=0.3, size=(40, 3000)), axis=0)
    others = -200 + rng.normal(scale=3.0, size=(5, 3000))
    L = np.concatenate([others, walk])
    names = [f"m{i}" for i in range(len(L))]
    path = list(range(5, 45))
    report = trajectory(L, path, names)
    clipped, _ = clip(L)
    kl = kl_matrix(clipped)
    np.testing.assert_allclose(report.kl_to_next[:-1], [kl[i, i + 1] for i in path[:-1]], rtol=1e-12)
    np.testing.assert_allclose(report.kl_to_final, kl[path, path[-1]], rtol=1e-12)
    assert np.isnan(report.kl_to_next[-1]) and report.kl_to_final[-1] == 0
    exponents = report.loglik_fit.exponents[np.isfinite(report.loglik_fit.exponents)]
    print(f"random walk in log-likelihood space: median c = {np.median(exponents):.4f}")
    assert abs(np.median(exponents) - 1.0) < 2 * EXPONENT_TOLERANCE
    with pytest.raises(AnalysisError, match="twice"):
        trajectory(L, [5, 6, 5], names)


def test_weight_distances_hold_only_the_window():
    rng = np.random.default_rng(3)
    walk = np.cumsum(rng.normal(size=(14, 500)), axis=0).astype(np.float32)
    loaded = []

    def load(index: int) -> np.ndarray:
        loaded.append(index)
        return walk[index]

    distances = weight_distances(load, len(walk), window=4)
    assert loaded == list(range(len(walk)))  # each checkpoint loaded once, in order
    exact = _squared_distance_matrix(walk.astype(np.float64))
    band = np.abs(np.subtract.outer(np.arange(14), np.arange(14))) <= 4
    np.testing.assert_allclose(distances[band], exact[band], rtol=1e-5, atol=1e-3)
    assert np.isnan(distances[~band]).all()


def test_lineage_rank_and_kl():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(3, 500)) * 5
    children = base + rng.normal(size=(3, 500)) * 0.5
    L = np.concatenate([base, children]) - 100
    names = ["a", "b", "c", "a-ft", "b-ft", "c-ft"]
    rows = lineage(L, names, [("a", "a-ft"), ("c", "b-ft")])
    kl = kl_matrix(clip(L)[0])
    assert rows[0].parent_rank == 1 and rows[0].nearest == "a"
    assert rows[0].kl == pytest.approx(kl[3, 0])
    # b-ft's nearest is b, not the c it is said to come from.
    assert rows[1].parent_rank > 1 and rows[1].nearest == "b" and rows[1].candidates == 5
    with pytest.raises(AnalysisError, match="not in the store: z"):
        lineage(L, names, [("z", "a")])
    # Ranked among the fine-tunes only, a-ft's nearest is another fine-tune.
    (limited,) = lineage(L, names, [("a", "a-ft")], among=[0, 3, 4, 5])
    assert limited.candidates == 3 and limited.parent_rank == 1
    with pytest.raises(AnalysisError, match="not among"):
        lineage(L, names, [("b", "a-ft")], among=[0, 3, 4, 5])
    # The clipping quantile reaches the KL: unclipped, a-ft's KL to a is that of the raw matrix.
    L[3, :25] -= 400.0
    (clipped,) = lineage(L, names, [("a", "a-ft")])
    (unclipped,) = lineage(L, names, [("a", "a-ft")], clip_quantile=0)
    assert clipped.kl == pytest.approx(kl_matrix(clip(L)[0])[3, 0])
    assert unclipped.kl == pytest.approx(kl_matrix(L)[3, 0]) and unclipped.kl > clipped.kl


# ---------------------------------------------------------------------------------------------
# The papers' text filter: the texts that change most between checkpoints after the warm-up

WARMUP = 100.0


def _heavy_tailed_run(seed: int = 6):
    """A run of 30 checkpoints on a random walk over 2000 texts, beside 4 unrelated models: the
    first 5 checkpoints (steps below WARMUP) move every text by tens of nats, and 40 outlier
    texts jump by 20-60 nats once after the warm-up. Returns L, the path, its steps and the
    outliers."""
    rng = np.random.default_rng(seed)
    count, texts = 30, 2000
    steps = np.array([0.0, 10, 20, 40, 80, *(WARMUP + 50 * np.arange(count - 5))])
    walk = -300 + np.cumsum(rng.normal(scale=0.3, size=(count, texts)), axis=0)
    walk[:5] += rng.normal(scale=20.0, size=(5, texts))
    outliers = rng.choice(texts, 40, replace=False)
    for text in outliers:
        walk[rng.integers(6, count):, text] += rng.uniform(20, 60)
    others = -300 + rng.normal(scale=5.0, size=(4, texts))
    return np.concatenate([others, walk]), list(range(4, 4 + count)), steps, outliers


def _reference_filter(L, path, steps, percent: int, warmup: float):
    """The papers' preprocessing, written out in numpy: clip at the 2% quantile of the whole
    matrix; per text, the largest absolute change between consecutive checkpoints whose earlier
    one is past the warm-up; drop the top ``percent``% of texts; double-centre the rest and take
    ‖q_i − q_j‖² / 2N. Returns the dropped columns and the KL matrix of the path."""
    clipped = np.maximum(L, np.quantile(L, 0.02))[path]
    pairs = [t for t in range(len(path) - 1) if steps[t] >= warmup]
    change = np.max(np.abs(np.diff(clipped, axis=0)[pairs]), axis=0)
    dropped = np.sort(np.argsort(change)[::-1][: percent * L.shape[1] // 100])
    kept = clipped[:, np.setdiff1d(np.arange(L.shape[1]), dropped)]
    q = kept - kept.mean(axis=1, keepdims=True)
    q = q - q.mean(axis=0)
    kl = ((q[:, None, :] - q[None, :, :]) ** 2).sum(axis=2) / (2 * kept.shape[1])
    return dropped, kl


def _reference_exponents(kl, steps, window: int = 10, min_points: int = 3) -> np.ndarray:
    """The least-squares slope of log KL(t0, t0+Δ) on log Δ, start by start."""
    exponents = np.full(len(steps), np.nan)
    for start in range(len(steps)):
        ahead = np.arange(start + 1, min(start + window, len(steps) - 1) + 1)
        if ahead.size < min_points:
            continue
        x, y = np.log(steps[ahead] - steps[start]), np.log(kl[start, ahead])
        exponents[start] = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    return exponents


def test_dropping_the_texts_that_change_most_matches_the_papers_steps():
    L, path, steps, outliers = _heavy_tailed_run()
    names = [f"m{i}" for i in range(len(L))]
    report = trajectory(L, path, names, steps=steps, drop_top_change=0.03, warmup=WARMUP)
    dropped, kl = _reference_filter(L, path, steps, 3, WARMUP)
    np.testing.assert_array_equal(report.dropped_texts, dropped)
    assert len(dropped) == 60 and set(outliers) <= set(dropped)
    np.testing.assert_allclose(report.kl_to_next[:-1], np.diag(kl, 1), rtol=1e-12, atol=0)
    np.testing.assert_allclose(report.kl_to_final, kl[:, -1], rtol=1e-12, atol=1e-300)
    expected = _reference_exponents(kl, steps)
    np.testing.assert_array_equal(np.isnan(report.loglik_fit.exponents), np.isnan(expected))
    np.testing.assert_allclose(report.loglik_fit.exponents, expected, rtol=0, atol=1e-12)
    # Bits per byte: the mean length is over the kept texts.
    text_bytes = np.random.default_rng(7).integers(50, 500, L.shape[1])
    in_bits = trajectory(
        L, path, names, steps=steps, drop_top_change=0.03, warmup=WARMUP, text_bytes=text_bytes
    )
    kept_bytes = np.delete(text_bytes, dropped).mean()
    np.testing.assert_allclose(in_bits.kl_to_next[:-1], np.diag(kl, 1) / (kept_bytes * np.log(2)), rtol=1e-12)

    # Left in, the outliers bend the exponents; counting the warm-up's moves instead picks
    # texts by how the start of training moved them, and misses outliers.
    plain = trajectory(L, path, names, steps=steps)
    assert plain.dropped_texts.size == 0
    shift = np.nanmedian(np.abs(plain.loglik_fit.exponents - report.loglik_fit.exponents))
    print(f"median shift of the exponents when the outliers stay: {shift:.3f}")
    assert shift > 0.05
    from_start = trajectory(L, path, names, steps=steps, drop_top_change=0.03)
    np.testing.assert_array_equal(from_start.dropped_texts, _reference_filter(L, path, steps, 3, 0.0)[0])
    assert not set(outliers) <= set(from_start.dropped_texts)


def test_top_change_texts_edge_cases():
    rows = np.array([[0.0, 0.0, 0.0, 0.0], [5.0, 1.0, 1.0, 0.0], [5.0, 1.0, 4.0, 0.5]])
    # Positions 0, 1, 2: from step 1 only the last pair counts. Ties go to the earlier text.
    assert top_change_texts(rows, 0.5, warmup=1).tolist() == [2, 3]  # changes 0, 0, 3, 0.5
    assert top_change_texts(rows, 0.5).tolist() == [0, 2]  # changes 5, 1, 3, 0.5
    assert top_change_texts(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]), 0.34).tolist() == [0]
    # 0.29 of 100 texts is 29 texts, though 0.29 · 100 is 28.999999999999996 in binary.
    assert top_change_texts(np.arange(200.0).reshape(2, 100), 0.29).size == 29
    assert top_change_texts(rows, 0.0, warmup=99).size == 0  # nothing to drop, nothing to check
    with pytest.raises(AnalysisError, match="warm-up"):
        top_change_texts(rows, 0.5, steps=[0, 10, 20], warmup=20)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(AnalysisError, match=r"in \[0, 1\)"):
            top_change_texts(rows, bad)


# ---------------------------------------------------------------------------------------------
# End to end: a store of tiny checkpoints on a random walk in weight space


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    from safetensors.numpy import load_file, save_file

    root = tmp_path_factory.mktemp("run")
    first = save_random_model(root / "step-0", tiny_llama_config(), seed=5)
    weights = load_file(first / "model.safetensors")
    rng = np.random.default_rng(5)
    paths = [first]
    for step in range(1, 6):
        weights = {
            name: (value + rng.normal(scale=0.01, size=value.shape)).astype(value.dtype)
            for name, value in weights.items()
        }
        directory = root / f"step-{step * 100}"
        shutil.copytree(first, directory)
        save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
        paths.append(directory)
    return paths


@pytest.fixture(scope="module")
def run_store(checkpoints, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run-store")
    texts = root / "texts.jsonl"
    with open(texts, "w", encoding="utf-8") as handle:
        for i, text in enumerate([TEXTS[3], TEXTS[6][:70], TEXTS[0]]):
            handle.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
    out = root / "run.h5"
    jaxmap.score([str(p) for p in checkpoints], texts, out=out, progress=False)
    jaxmap.score([str(checkpoints[-1])], texts, out=out, progress=False, logit_lens=True)
    return out


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_trajectory_cli_on_checkpoints(checkpoints, run_store, tmp_path, capsys):
    table, image = tmp_path / "path.csv", tmp_path / "path.png"
    status = main([
        "trajectory", str(run_store), "--path-glob", "*/step-*", "--out", str(table),
        "--plot", str(image), "--window", "5",
    ])
    assert status == 0
    rows = _read_csv(table)
    # Natural order: step-0, step-100, ..., step-500 (not step-0, step-100, step-200 ... by text).
    assert [Path(r["model"]).name for r in rows] == [p.name for p in checkpoints]
    weight_exponents = [float(r["exponent_weights"]) for r in rows if r["exponent_weights"]]
    assert len(weight_exponents) == 3  # starts with at least 3 later checkpoints
    # Independent Gaussian steps in ~60k weights: ‖θ(t0+Δ) − θ(t0)‖² grows as Δ.
    assert max(abs(c - 1) for c in weight_exponents) < 0.02
    assert all(float(r["kl_to_next_nats"]) > 0 for r in rows[:-1])
    assert image.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "median exponent" in printed and "weight space" in printed
    assert "left out 0 of 3 texts (fraction 0.03)" in printed  # the checkpoints' default


def test_trajectory_cli_path_file_steps_and_layers(checkpoints, run_store, tmp_path, capsys):
    listing = tmp_path / "run.txt"
    listing.write_text(
        "# a run\n" + "".join(f"{p},{i * 100}\n" for i, p in enumerate(checkpoints)), "utf-8"
    )
    table = tmp_path / "steps.csv"
    assert main(["trajectory", str(run_store), "--path-file", str(listing), "--no-weights", "--out", str(table)]) == 0
    rows = _read_csv(table)
    assert [float(r["step"]) for r in rows] == [i * 100 for i in range(len(checkpoints))]
    assert all(r["exponent_weights"] == "" for r in rows)
    assert "left out 0 of 3 texts" in capsys.readouterr().out  # checkpoints: the papers' filter
    # The logit-lens thread of the last checkpoint: layer 0 ... 2, Δ counted in layers.
    layers_table, image = tmp_path / "layers.csv", tmp_path / "layers.png"
    status = main([
        "trajectory", str(run_store), "--layers", str(checkpoints[-1]), "--out", str(layers_table),
        "--plot", str(image), "--min-points", "2",
    ])
    assert status == 0
    rows = _read_csv(layers_table)
    assert [r["model"].rsplit("@", 1)[1] for r in rows] == ["layer0", "layer1", "layer2"]
    assert rows[0]["exponent_loglik"] and not rows[0]["exponent_weights"]
    assert image.stat().st_size > 10_000
    assert "left out" not in capsys.readouterr().out  # layers keep every text by default


def test_trajectory_cli_errors(checkpoints, run_store, capsys):
    assert main(["trajectory", str(run_store), "--path", str(checkpoints[0]), "nonesuch"]) == 2
    error = capsys.readouterr().err.strip()
    assert "nonesuch" in error and str(run_store) in error and len(error.splitlines()) == 1
    assert main(["trajectory", str(run_store), "--layers", str(checkpoints[0])]) == 2
    assert "--logit-lens" in capsys.readouterr().err


def test_trajectory_cli_drops_the_texts_that_change_most(tmp_path, capsys):
    L, path, steps, _ = _heavy_tailed_run()
    matrix, listing, table = tmp_path / "run.npy", tmp_path / "run.txt", tmp_path / "run.csv"
    np.save(matrix, L)
    listing.write_text("".join(f"model_{i},{step:g}\n" for i, step in zip(path, steps)), "utf-8")
    names = [f"model_{i}" for i in range(len(L))]
    command = ["trajectory", str(matrix), "--path-file", str(listing), "--no-weights", "--out", str(table)]
    assert main([*command, "--warmup-steps", "100"]) == 0
    assert "left out 60 of 2000 texts (fraction 0.03)" in capsys.readouterr().out
    report = trajectory(L, path, names, steps=steps, drop_top_change=0.03, warmup=WARMUP)
    rows = _read_csv(table)
    # Every digit is written: the table read back is the report, not a rounding of it.
    assert [float(r["kl_to_next_nats"]) for r in rows[:-1]] == report.kl_to_next[:-1].tolist()
    assert [float(r["kl_to_final_nats"]) for r in rows] == report.kl_to_final.tolist()
    np.testing.assert_array_equal([float(r["exponent_loglik"] or "nan") for r in rows], report.loglik_fit.exponents)

    assert main([*command, "--drop-top-change", "0"]) == 0
    assert "left out" not in capsys.readouterr().out
    plain = trajectory(L, path, names, steps=steps)
    assert [float(r["kl_to_next_nats"]) for r in _read_csv(table)[:-1]] == plain.kl_to_next[:-1].tolist()

    assert main([*command, "--warmup-steps", "1e9"]) == 2
    error = capsys.readouterr().err.strip()
    assert "warm-up" in error and str(matrix) in error and len(error.splitlines()) == 1


@pytest.mark.parametrize(
    "option, value",
    [
        ("--drop-top-change", "-0.1"),
        ("--drop-top-change", "1"),
        ("--drop-top-change", "1.5"),
        ("--drop-top-change", "three"),
        ("--drop-top-change", "nan"),
        ("--warmup-steps", "-5"),
    ],
)
def test_trajectory_cli_refuses_a_bad_fraction_or_warmup(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as leaving:
        main(["trajectory", str(tmp_path / "run.npy"), "--path", "a", "b", option, value])
    assert leaving.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and option in error and repr(value) in error


def test_lineage_cli_from_table_and_model_cards(checkpoints, run_store, tmp_path, capsys):
    parents = tmp_path / "parents.csv"
    parents.write_text(f"parent,child\n{checkpoints[0]},{checkpoints[1]}\n{checkpoints[0]},{checkpoints[5]}\n", "utf-8")
    out = tmp_path / "lineage.csv"
    assert main(["lineage", str(run_store), "--parents", str(parents), "--out", str(out)]) == 0
    rows = _read_csv(out)
    store = jaxmap.open_store(run_store)
    kl = kl_matrix(clip(store.loglik)[0])
    first, second = (store.models.index(str(p)) for p in checkpoints[:2])
    assert float(rows[0]["kl_nats"]) == pytest.approx(kl[second, first], rel=1e-6)
    # The rank among the checkpoints (the logit-lens rows are not candidate parents).
    checkpoint_rows = [store.models.index(str(p)) for p in checkpoints]
    nearer = [j for j in checkpoint_rows if j != second and kl[second, j] < kl[second, first]]
    assert int(rows[0]["parent_rank"]) == 1 + len(nearer)
    assert rows[0]["candidates"] == str(len(checkpoints) - 1)
    # The same from a model card's base_model.
    (checkpoints[1] / "README.md").write_text(f"---\nbase_model: {checkpoints[0]}\nlicense: mit\n---\n# x\n", "utf-8")
    assert read_base_model(checkpoints[1]) == str(checkpoints[0])
    assert main(["lineage", str(run_store)]) == 0
    printed = capsys.readouterr().out
    assert "from the model cards" in printed and checkpoints[1].name in printed
    bad = tmp_path / "bad.csv"
    bad.write_text("parent,kid\na,b\n", "utf-8")
    assert main(["lineage", str(run_store), "--parents", str(bad)]) == 2
    assert "parent and child" in capsys.readouterr().err
