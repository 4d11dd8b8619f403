"""Adding a model to a target precision (jaxmap.analysis.sequential, jaxmap.adaptive)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import jaxmap
from jaxmap.analysis import AnalysisError, clip, double_center, place_models
from jaxmap.analysis.sequential import (
    SequentialState,
    draw_columns,
    exact_kl,
    importance_probabilities,
    next_total,
    sequential_estimate,
    sequential_rounds,
)
from jaxmap.cli import main


def synthetic_map(seed=0, models=20, texts=600):
    rng = np.random.default_rng(seed)
    spread = rng.gamma(2.0, 1.0, texts)
    base = -rng.gamma(5, 20, texts)
    latent = rng.normal(size=(models + 1, 4))
    L = base + latent @ (rng.normal(size=(4, texts)) * spread) * 0.3
    L += rng.normal(size=(models + 1, texts)) * spread * 0.2
    L_map, new = L[:models], L[models]
    clipped, tau = clip(L_map)
    return L_map, new, tau, importance_probabilities(double_center(clipped), "ls")


def test_estimate_is_place_models_on_the_draws_plus_its_ratio_bias():
    L_map, new, tau, p = synthetic_map()
    draws = draw_columns(p, 3, 0, 200)
    kl, se = sequential_estimate(L_map, tau, p, draws, new)
    columns, counts = np.unique(draws, return_counts=True)
    expected = place_models(L_map, tau, columns, np.sqrt(counts / (200 * p[columns])), new[columns])[0]
    assert np.all(kl > expected) and np.allclose(kl, expected, rtol=0.05)
    assert np.all(se > 0)
    # The draw stream continues: a resumed run draws what one run would have.
    assert np.array_equal(draw_columns(p, 3, 0, 300)[200:], draw_columns(p, 3, 200, 300))


def test_intervals_cover_the_known_kl_and_the_final_estimate_is_unbiased():
    L_map, new, tau, p = synthetic_map()
    truth = exact_kl(L_map, tau, new)
    nearest = np.argsort(truth)[:3]
    covered, errors, texts = [], [], []
    for replicate in range(300):
        result = sequential_rounds(L_map, tau, p, lambda c: new[c], target_se=0.05, k=3, seed=replicate)
        assert result.reason == "target" and result.se[np.argsort(result.kl)[:3]].max() <= 0.05
        covered.append(np.abs(result.kl[nearest] - truth[nearest]) <= 1.96 * result.se[nearest])
        errors.append(result.kl[nearest] - truth[nearest])
        texts.append(result.texts)
    coverage = np.mean(covered)
    assert 0.91 <= coverage <= 0.98, coverage
    errors = np.asarray(errors)
    assert abs(errors.mean()) <= 4 * errors.std() / np.sqrt(errors.size)
    assert np.mean(texts) < 600


def test_stopping_rule_waits_for_the_minimum_and_grows_at_most_twofold():
    assert next_total(100, 0.1, 0.05, 32) == 200
    assert next_total(100, 0.051, 0.05, 32) == 132
    L_map, new, tau, p = synthetic_map()
    result = sequential_rounds(L_map, tau, p, lambda c: new[c], target_se=1e3, k=2, min_draws=40)
    assert result.reason == "target" and result.draws == 40 and len(result.rounds) == 1
    exhausted = sequential_rounds(L_map, tau, p, lambda c: new[c], target_se=1e-9, k=2)
    assert exhausted.reason == "all texts" and not exhausted.se.any()
    assert np.allclose(exhausted.kl, exact_kl(L_map, tau, new))


def test_resume_after_an_interruption_continues_the_same_rounds():
    L_map, new, tau, p = synthetic_map()
    asked = []

    def score(columns):
        asked.extend(columns.tolist())
        return new[columns]

    whole = sequential_rounds(L_map, tau, p, lambda c: new[c], target_se=0.03, k=3, seed=5)
    state, saved = SequentialState(), {}
    first = sequential_rounds(
        L_map, tau, p, score, target_se=0.03, k=3, seed=5, state=state, max_rounds=1,
        on_round=lambda s, v: saved.update(values=v.copy()),
    )
    assert first.reason is None and len(state.rounds) == 1
    resumed = sequential_rounds(
        L_map, tau, p, score, target_se=0.03, k=3, seed=5, state=state, values=saved["values"]
    )
    assert len(asked) == len(set(asked)), "no text is scored twice"
    assert resumed.draws == whole.draws and np.allclose(resumed.kl, whole.kl)


def test_bad_inputs_each_give_one_clear_line():
    L_map, new, tau, p = synthetic_map()
    with pytest.raises(AnalysisError, match="target SE must be a positive"):
        sequential_rounds(L_map, tau, p, lambda c: new[c], target_se=0)
    with pytest.raises(AnalysisError, match="k = 30 nearest map models, but the map has 20"):
        sequential_rounds(L_map, tau, p, lambda c: new[c], target_se=0.1, k=30)


def test_add_to_a_target_se_end_to_end(tiny_models, text_file, tmp_path, capsys):
    store = tmp_path / "map.h5"
    jaxmap.score([str(m) for m in tiny_models[:3]], text_file, out=store, progress=False)
    twin = tmp_path / "twin-of-1"
    shutil.copytree(tiny_models[1], twin)
    out = tmp_path / "adaptive"
    n_texts = len(jaxmap.open_store(store).text_ids)
    from jaxmap.adaptive import add_adaptive, read_adaptive_state

    cut = add_adaptive(store, [str(twin)], out, target_se=1e-12, k=2, min_draws=4, max_rounds=1, progress=False)
    assert cut["finished"] == [None] and read_adaptive_state(out)["models"][str(twin)]["rounds"]
    capsys.readouterr()
    code = main(["add", str(store), str(twin), "--target-se", "1e-12", "--k", "2", "--out", str(out), "--quiet"])
    # min_draws differs from the first run's: refused in one line, naming the setting.
    assert code == 2 and "min_draws" in capsys.readouterr().err
    placement = add_adaptive(store, [str(twin)], out, target_se=1e-12, k=2, min_draws=4, progress=False)
    state = read_adaptive_state(out)["models"][str(twin)]
    assert placement["finished"] == [state["reason"]] and state["reason"] in {"target", "all texts"}
    kl = placement["kl"]
    assert kl.shape == (1, 3) and placement["se"].shape == (1, 3)
    assert np.argmin(kl[0]) == 1 and kl[0, 1] <= 1e-9 * kl[0].max()
    assert placement["subset_texts"] <= n_texts
    # A model of the map, a bad target, a k larger than the map: one line each, exit 2.
    for argv, message in [
        ([str(tiny_models[0]), "--target-se", "0.1", "--k", "2"], "already on the map"),
        ([str(tiny_models[3]), "--target-se", "-1", "--k", "2"], "target SE must be a positive"),
        ([str(tiny_models[3]), "--target-se", "0.1", "--k", "9"], "but the map has 3"),
    ]:
        assert main(["add", str(store), *argv, "--out", str(tmp_path / "other")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert main(["info", str(out / "m0-r1.h5")]) == 0
    assert "target" in capsys.readouterr().out
    # The API path: a Placement with its SEs, resuming the finished run without scoring again.
    placed = jaxmap.add_models(store, None, [str(twin)], target_se=1e-12, k=2, out=tmp_path / "api", progress=False)
    assert isinstance(placed, jaxmap.Placement) and placed.se.shape == (1, 3) and placed.finished[0]
    assert main(["add", str(store), str(twin), "--target-se", "1e-12", "--k", "2", "--out", str(tmp_path / "api"), "--quiet"]) == 0
    assert "stopped:" in capsys.readouterr().out
