"""``jaxmap add`` with the real scoring engine: a copy of a map model lands on that model."""

from __future__ import annotations

import shutil

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
