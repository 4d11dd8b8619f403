"""``jaxmap add`` with the real scoring engine: a copy of a map model lands on that model."""

from __future__ import annotations

import shutil

import pytest

import jaxmap
from jaxmap.cli import main


def test_added_copy_of_a_map_model_is_its_nearest_neighbour(tiny_models, text_file, tmp_path, capsys):
    store = tmp_path / "map.h5"
    jaxmap.score([str(m) for m in tiny_models[:3]], text_file, out=store, bos_policy="paper", progress=False)
    subset = tmp_path / "subset.jsonl"
    assert main(["resample", str(store), "--n", "6", "--method", "ls", "--seed", "1", "--out", str(subset)]) == 0
    twin = tmp_path / "twin-of-1"
    shutil.copytree(tiny_models[1], twin)
    capsys.readouterr()
    assert main(["add", str(store), "--subset", str(subset), str(twin), "--kl-out", str(tmp_path / "kl.csv")]) == 0
    printed = capsys.readouterr().out
    added = jaxmap.open_store(subset.with_suffix(".h5"))
    assert added.model_meta[0]["bos_policy"] == "paper", "add takes the map's BOS policy"
    rows = (tmp_path / "kl.csv").read_text().splitlines()
    header, values = rows[0].split(","), rows[1].split(",")
    distances = {name: float(v) for name, v in zip(header[1:], values[1:])}
    # Equal rows; the coordinates of one new row and of the map's rows are centred in separate
    # jitted calls, so they may differ in the last bits (seen: 2e-27 against ~300).
    others = min(distances[str(tiny_models[0])], distances[str(tiny_models[2])])
    assert others > 0 and distances[str(tiny_models[1])] <= 1e-15 * others
    assert str(tiny_models[1]) in printed
    assert main(["add", str(store), "--subset", str(subset), str(twin), "--bos-policy", "full"]) == 2
    assert "paper" in capsys.readouterr().err


def test_add_models_api_returns_kl_to_every_map_model(tiny_models, text_file, tmp_path):
    store = tmp_path / "map.h5"
    jaxmap.score([str(m) for m in tiny_models[:3]], text_file, out=store, bos_policy="paper", progress=False)
    matrix = jaxmap.open_store(store)
    Q = jaxmap.double_center(jaxmap.clip(matrix.loglik)[0])
    indices, scales = jaxmap.resample(Q, n=6, method="kl", seed=2)
    from jaxmap.analysis import MapInfo, write_subset

    _, tau = jaxmap.clip(matrix.loglik)
    info = MapInfo(tau, 6, Q.shape[1], Q.shape[0], "kl", 2, 0.02, matrix.text_set.fingerprint, str(store))
    subset = tmp_path / "subset.jsonl"
    write_subset(subset, matrix.text_ids, matrix.texts, indices, scales, info)
    twin = tmp_path / "twin-of-2"
    shutil.copytree(tiny_models[2], twin)
    placement = jaxmap.add_models(store, subset, [str(twin), str(tiny_models[3])], progress=False)
    assert placement.models == [str(twin), str(tiny_models[3])]
    assert placement.map_models == matrix.models
    assert placement.kl.shape == (2, 3) and placement.unit == "nats per text"
    assert placement.subset_texts == len(indices)
    nearest_of_twin = placement.nearest(1)[0][0]
    assert nearest_of_twin[0] == str(tiny_models[2]) and nearest_of_twin[1] <= 1e-15 * placement.kl[0].max()
    # Against the library's placement on the same rows, scored independently of add_models.
    added = jaxmap.open_store(placement.scores)
    expected = jaxmap.place_models(matrix.loglik, tau, indices, scales, added.loglik[[1]])
    assert abs(placement.kl[1] - expected[0]).max() <= 1e-9 * expected.max()
    in_bits = jaxmap.add_models(store, subset, [str(twin)], bits_per_byte=True, progress=False)
    assert in_bits.unit == "bits per byte" and in_bits.kl.shape == (1, 3)
    with pytest.raises(jaxmap.JaxmapError, match="paper"):
        jaxmap.add_models(store, subset, [str(twin)], bos_policy="full", progress=False)


def test_add_quiet_shows_no_progress(tiny_models, text_file, tmp_path, capsys):
    store = tmp_path / "map.h5"
    jaxmap.score([str(m) for m in tiny_models[:3]], text_file, out=store, progress=False)
    subset = tmp_path / "subset.jsonl"
    assert main(["resample", str(store), "--n", "6", "--seed", "1", "--out", str(subset)]) == 0
    capsys.readouterr()
    assert main(["add", str(store), "--subset", str(subset), str(tiny_models[3]), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "scored 1 models" in captured.out
