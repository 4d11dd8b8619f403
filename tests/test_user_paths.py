"""Paths as people type them: `~` left for jaxmap to expand (quoted, or after `--opt=`), and
folders with spaces, for text sets, stores and every output file."""

from __future__ import annotations

import shutil

from jaxmap import open_store
from jaxmap.analysis import load_loglik
from jaxmap.cli import main


def test_tilde_and_spaces_reach_the_files_they_name(tiny_models, text_file, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home of user"
    (home / "my texts").mkdir(parents=True)
    shutil.copy(text_file, home / "my texts" / "t.jsonl")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    models = [str(m) for m in tiny_models[:3]]
    assert main(["score", *models, "--texts", "~/my texts/t.jsonl", "--out", "~/maps/s.h5", "--quiet"]) == 0
    assert sorted(open_store(home / "maps" / "s.h5").models) == sorted(models)
    assert main(["info", "~/maps/s.h5"]) == 0
    assert main(["map", "~/maps/s.h5", "--out", "~/maps/the map.png", "--html", "~/maps/the map.html"]) == 0
    assert (home / "maps" / "the map.png").stat().st_size > 0 and (home / "maps" / "the map.html").is_file()
    assert main(["kl", "~/maps/s.h5", "--out", "~/maps/kl table.csv"]) == 0
    assert (home / "maps" / "kl table.csv").read_text().count("\n") == 4
    assert load_loglik("~/maps/s.h5").loglik.shape == (3, 9)  # the API too
    assert not (tmp_path / "~").exists()
