"""The analysis subcommands on a small store and on plain matrices."""

from __future__ import annotations

import csv
import json
import sys
import types

import h5py
import numpy as np
import pytest

from jaxmap.analysis import clip, double_center, kl_matrix, load_loglik, read_subset, resample
from jaxmap.cli import main
from jaxmap.store import StoreWriter, open_store
from jaxmap.texts import TextSet, load_texts

FAMILIES, PER_FAMILY, TEXTS = 4, 6, 240
LEAKED = (11, 77)


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def write_rows(path, texts: TextSet, names, loglik) -> None:
    writer = StoreWriter(path, texts)
    for name, row in zip(names, loglik):
        writer.append(name, row, np.ones(len(row), np.int32), np.zeros(len(row), bool), {})


@pytest.fixture(scope="module")
def map_store(tmp_path_factory):
    """A store of 4 families × 6 models; model fam2-m3 saw texts 11 and 77 in training."""
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    texts = TextSet.from_texts(
        [" ".join(rng.choice(words, size=rng.integers(5, 60))) + f" #{i}" for i in range(TEXTS)],
        ids=[f"t{i:03d}" for i in range(TEXTS)],
    )
    difficulty = -rng.uniform(50, 900, TEXTS)
    rows, names, ability, family = [], [], [], []
    for f in range(FAMILIES):
        base = difficulty + rng.normal(0, 6, TEXTS)
        for k in range(PER_FAMILY):
            skill = rng.normal()
            rows.append(base + skill * np.linspace(-3, 3, TEXTS) + rng.normal(0, 1, TEXTS))
            names.append(f"fam{f}-m{k}")
            ability.append(skill)
            family.append(f"family{f}")
    loglik = np.array(rows)
    loglik[names.index("fam2-m3"), list(LEAKED)] += 25.0
    directory = tmp_path_factory.mktemp("map")
    path = directory / "map.h5"
    write_rows(path, texts, names, loglik)
    with open(directory / "models.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "family", "mmlu"])
        for name, fam, skill in zip(names, family, ability):
            writer.writerow([name, fam, f"{50 + 12 * skill:.2f}"])
    return path


def read_csv_matrix(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return (
        rows[0][1:],
        [r[0] for r in rows[1:]],
        np.array([[float(v) for v in r[1:]] for r in rows[1:]]),
    )


def test_kl_writes_the_matrix_and_prints_neighbours(map_store, tmp_path, capsys):
    assert run("kl", map_store, "--out", tmp_path / "kl.csv", "--neighbors", "2") == 0
    columns, rows, values = read_csv_matrix(tmp_path / "kl.csv")
    store = open_store(map_store)
    assert columns == rows == store.models
    np.testing.assert_allclose(values, kl_matrix(clip(store.loglik)[0]), rtol=1e-9)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("fam1-m0: ")]
    assert len(lines) == 1 and lines[0].count("fam1-") == 3  # itself + two neighbours of its family

    assert run("kl", map_store, "--out", tmp_path / "bpb.csv", "--bits-per-byte") == 0
    bpb = read_csv_matrix(tmp_path / "bpb.csv")[2]
    np.testing.assert_allclose(bpb, values / (store.text_bytes.mean() * np.log(2)), rtol=1e-8)


def test_plain_matrices_are_read(map_store, tmp_path, capsys):
    loglik = open_store(map_store).loglik
    np.save(tmp_path / "L.npy", loglik)
    with h5py.File(tmp_path / "plain.h5", "w") as handle:
        handle["group/scores"] = loglik
        handle["names"] = np.arange(3)
    with h5py.File(tmp_path / "named.h5", "w") as handle:
        handle["loglik"] = loglik
        handle["models"] = [f"m{i}" for i in range(len(loglik))]
    assert load_loglik(tmp_path / "plain.h5").models[0] == "model_0"
    assert load_loglik(tmp_path / "named.h5").models[-1] == f"m{len(loglik) - 1}"
    assert run("kl", tmp_path / "L.npy", "--out", tmp_path / "kl.csv") == 0
    assert read_csv_matrix(tmp_path / "kl.csv")[1][0] == "model_0"

    assert run("kl", tmp_path / "L.npy", "--out", tmp_path / "x.csv", "--bits-per-byte") == 2
    assert "L.npy: bits per byte needs" in capsys.readouterr().err
    with h5py.File(tmp_path / "two.h5", "w") as handle:
        handle["a"], handle["b"] = loglik, loglik
    bad = loglik.copy()
    bad[5, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    (tmp_path / "L.pkl").write_bytes(b"")
    for name, message in [
        ("two.h5", "not exactly one 2-D dataset (found: a, b)"),
        ("nan.npy", "NaN log-likelihoods in 1 rows (first: row 5)"),
        ("L.pkl", "unsupported file type .pkl"),
        ("missing.npy", "no such file"),
    ]:
        assert run("kl", tmp_path / name, "--out", tmp_path / "x.csv") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and name in err and message in err


def test_map_png_and_offline_html(map_store, tmp_path, capsys):
    meta = map_store.parent / "models.csv"
    assert (
        run(
            "map",
            map_store,
            "--out",
            tmp_path / "map.png",
            "--html",
            tmp_path / "map.html",
            "--meta",
            meta,
            "--color-by",
            "family",
            "--coords",
            tmp_path / "xy.csv",
        )
        == 0
    )
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "map.html").read_text()
    data = json.loads(page.split('<script type="application/json" id="map-data">', 1)[1].split("</script>", 1)[0])
    assert all(
        data["colorings"]["family"]["labels"][data["names"].index(f"fam{f}-m{k}")] == f"family{f}"
        for f in range(FAMILIES)
        for k in range(PER_FAMILY)
    )
    assert data["color_by"] == "family" and all("mmlu: " in hover for hover in data["hover"])
    assert len(data["neighbors"][0]) == min(10, FAMILIES * PER_FAMILY - 1)
    assert "<script src" not in page and "<link" not in page  # nothing to fetch: works offline
    assert read_csv_matrix(tmp_path / "xy.csv")[2].shape == (FAMILIES * PER_FAMILY, 2)
    assert run("map", map_store, "--out", tmp_path / "pca.png", "--method", "pca") == 0

    assert (
        run("map", map_store, "--out", tmp_path / "x.png", "--meta", meta, "--color-by", "size")
        == 2
    )
    assert "models.csv: no column 'size' (columns: model, family, mmlu)" in capsys.readouterr().err
    assert run("map", map_store, "--out", tmp_path / "x.png", "--color-by", "family") == 2


def test_predict_prints_both_schemes(map_store, capsys):
    meta = map_store.parent / "models.csv"
    assert run("predict", map_store, "--scores", meta, "--target", "mmlu", "--seeds", "2") == 0
    assert (
        run(
            "predict",
            map_store,
            "--scores",
            meta,
            "--target",
            "mmlu",
            "--group-by",
            "family",
            "--seeds",
            "2",
        )
        == 2
    )
    out, err = capsys.readouterr()
    assert "KFold (5 folds, 2 seeds): Pearson" in out and "24 of 24 models have a mmlu score" in out
    assert "GroupKFold needs at least 5 groups, found 4" in err


def test_resample_writes_a_subset_and_a_curve(map_store, tmp_path, capsys):
    subset_path = tmp_path / "subset.jsonl"
    assert (
        run(
            "resample",
            map_store,
            "--n",
            60,
            "--method",
            "kl",
            "--seed",
            3,
            "--out",
            subset_path,
            "--curve",
            tmp_path / "curve.png",
            "--curve-sizes",
            "20,60",
            "--curve-seeds",
            3,
        )
        == 0
    )
    store = open_store(map_store)
    clipped, tau = clip(store.loglik)
    indices, scales = resample(double_center(clipped), 60, "kl", seed=3)
    subset = read_subset(subset_path)
    np.testing.assert_array_equal(subset.columns, indices)
    np.testing.assert_allclose(subset.scales, scales, rtol=1e-15)
    assert subset.map.tau == tau and subset.map.draws == 60 and subset.map.n_texts == TEXTS
    assert subset.map.text_fingerprint == store.text_fingerprint
    as_text_set = load_texts(subset_path)  # a plain text set too
    assert list(as_text_set.ids) == [store.text_ids[i] for i in indices]
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out

    np.save(tmp_path / "L.npy", store.loglik)
    assert run("resample", tmp_path / "L.npy", "--n", 10, "--out", tmp_path / "s.jsonl") == 2
    assert run("resample", map_store, "--n", 10) == 2
    err = capsys.readouterr().err
    assert "L.npy: a subset file needs the texts" in err and "nothing to do" in err


def test_add_scores_on_the_subset_and_places_models(map_store, tmp_path, monkeypatch, capsys):
    subset_path = tmp_path / "subset.jsonl"
    assert run("resample", map_store, "--n", 120, "--out", subset_path) == 0
    store = open_store(map_store)
    subset = read_subset(subset_path)
    # Stand-in engine: the "new" models are copies of fam0-m1 and fam3-m4 under new names.
    sources = {"new-a": "fam0-m1", "new-b": "fam3-m4"}
    calls = []

    def score(models, texts, out, **options):
        calls.append((list(models), options))
        rows = [store.loglik[store.models.index(sources[m])][subset.columns] for m in models]
        write_rows(out, texts, models, rows)
        return open_store(out)

    monkeypatch.setitem(sys.modules, "jaxmap.jobs", types.SimpleNamespace(score=score))
    out = tmp_path / "new.h5"
    assert (
        run(
            "add",
            map_store,
            "--subset",
            subset_path,
            "new-a",
            "new-b",
            "--out",
            out,
            "--kl-out",
            tmp_path / "placed.csv",
            "--neighbors",
            "1",
            "--bos-policy",
            "paper",
        )
        == 0
    )
    assert calls[0][0] == ["new-a", "new-b"] and calls[0][1]["bos_policy"] == "paper"
    printed = capsys.readouterr().out
    assert "\nnew-a: fam0-m1 (" in printed and "\nnew-b: fam3-m4 (" in printed
    columns, rows, placed = read_csv_matrix(tmp_path / "placed.csv")
    assert rows == ["new-a", "new-b"] and columns == store.models
    source = store.models.index("fam0-m1")
    assert placed[0, source] < 1e-12 * np.delete(placed[0], source).min()

    other = tmp_path / "other.jsonl"
    lines = subset_path.read_text().splitlines()
    record = json.loads(lines[0])
    record["text"] += " (edited)"
    other.write_text("\n".join([json.dumps(record)] + lines[1:]) + "\n")
    assert run("add", map_store, "--subset", other, "new-a", "--out", tmp_path / "o.h5") == 2
    assert f"text {record['id']!r} differs from column" in capsys.readouterr().err


def test_outliers_finds_the_leaked_texts(map_store, capsys, tmp_path):
    assert (
        run("outliers", map_store, "--model", "fam2-m3", "--top", 2, "--out", tmp_path / "z.csv")
        == 0
    )
    out = capsys.readouterr().out
    table = out.split("snippet\n")[1].splitlines()
    assert {line.split()[1] for line in table[:2]} == {f"t{i:03d}" for i in LEAKED}
    with open(tmp_path / "z.csv") as handle:
        assert len(list(csv.reader(handle))) == TEXTS + 1
    assert run("outliers", map_store, "--model", "fam2-m33") == 2
    assert "no model named 'fam2-m33'; did you mean fam2-m3" in capsys.readouterr().err


def test_score_and_meta_tables_from_spreadsheets_and_their_errors(map_store, tmp_path, capsys):
    """A byte-order mark (as spreadsheets write) is read; a model on two rows and a score that
    is not a finite number are refused naming the file, line or model."""
    meta = map_store.parent / "models.csv"
    with_bom = tmp_path / "bom.csv"
    with_bom.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    assert run("predict", map_store, "--scores", with_bom, "--target", "mmlu", "--seeds", "1") == 0
    assert "24 of 24 models have a mmlu score" in capsys.readouterr().out
    rows = meta.read_text().splitlines()
    (tmp_path / "twice.csv").write_text("\n".join([*rows, rows[3]]) + "\n")
    family_of_three = rows[3].split(",")
    (tmp_path / "nan.csv").write_text("\n".join([*rows[:3], ",".join([*family_of_three[:2], "nan"]), *rows[4:]]))
    for name, message in [
        ("twice.csv", f"twice.csv:{len(rows) + 1}: model '{family_of_three[0]}' has a second row (first on line 4)"),
        ("nan.csv", f"nan.csv: mmlu of {family_of_three[0]} is 'nan', not a finite number"),
    ]:
        assert run("predict", map_store, "--scores", tmp_path / name, "--target", "mmlu") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert run("map", map_store, "--out", tmp_path / "m.png", "--meta", tmp_path / "twice.csv",
               "--color-by", "family") == 2
    assert "has a second row" in capsys.readouterr().err and not (tmp_path / "m.png").exists()


def test_plain_matrix_errors_name_the_file_and_the_problem(map_store, tmp_path, capsys):
    loglik = open_store(map_store).loglik
    np.save(tmp_path / "L.npy", loglik)
    whole = (tmp_path / "L.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(whole[: len(whole) // 2])
    np.save(tmp_path / "objects.npy", np.array([[1, "a"], [2, "b"]], dtype=object), allow_pickle=True)
    (tmp_path / "empty.h5").write_bytes(b"")
    infinite = loglik.copy()
    infinite[2, 7] = np.inf
    with h5py.File(tmp_path / "inf.h5", "w") as handle:
        handle["loglik"] = infinite
    minus_infinity = loglik.copy()
    minus_infinity[:, :20] = -np.inf
    with h5py.File(tmp_path / "minus-inf.h5", "w") as handle:
        handle["loglik"] = minus_infinity
    for name, message in [
        ("cut.npy", "a damaged .npy file"),
        ("objects.npy", "holds Python objects, not numbers"),
        ("empty.h5", "not an HDF5 file (it is empty)"),
        ("inf.h5", "+inf log-likelihoods (probabilities above 1) in 1 rows (first: row 2)"),
        ("minus-inf.h5", f"L has {20 * len(loglik)} infinite entries"),
    ]:
        assert run("kl", tmp_path / name, "--out", tmp_path / "kl.csv") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{tmp_path / name}: " in err and message in err, err
    assert not (tmp_path / "kl.csv").exists()


def test_a_two_model_map_refuses_without_a_note_first(tmp_path, capsys):
    texts = TextSet.from_texts([f"text {i}" for i in range(6)])
    store = tmp_path / "two.h5"
    write_rows(store, texts, ["a", "b"], -np.arange(12, dtype=float).reshape(2, 6) - 1)
    capsys.readouterr()
    assert run("map", store, "--out", tmp_path / "m.png", "--method", "tsne") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "at least 3 models" in error[0], error
