"""Stores altered by hand after jaxmap wrote them: a removed /row_checksum dataset and an edited
settings attribute are found by `jaxmap info --verify`, by readers and by every writer, while
format 2 stores written before settings had a checksum still open."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from jaxmap.cli import main
from jaxmap.store import StoreError, StoreWriter, drop, open_store, settings_checksum, verify_rows
from jaxmap.texts import TextSet

TEXTS = TextSet.from_texts(["a", "bé"])
FLOAT32 = {"dtype": "float32", "bos_policy": "full"}


def _store(path, meta=None):
    writer = StoreWriter(path, TEXTS, FLOAT32)
    for i in range(2):
        writer.append(f"m{i}", np.full(2, -1.0 - i), np.ones(2, np.int32), np.zeros(2, bool), meta or {})
    writer.compact()
    return path


def _verify(path, capsys):
    code = main(["info", str(path), "--verify"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_removed_row_checksum_dataset_fails_verification(tmp_path, capsys):
    path = _store(tmp_path / "s.h5")
    with h5py.File(path, "r+") as handle:
        del handle["row_checksum"]
    assert [(where, problem.split(" (")[0]) for where, _, problem in verify_rows(path)] == [
        ("store", "no /row_checksum dataset")
    ]
    code, output = _verify(path, capsys)
    assert code == 1 and "no /row_checksum dataset" in output and "every checksum matches" not in output
    for use in (
        lambda: open_store(path),
        lambda: StoreWriter(path, TEXTS, FLOAT32),
        lambda: drop(path, ["m0"]),  # a rewrite would compute fresh checksums for altered rows
    ):
        with pytest.raises(StoreError, match=f"{path}: no /row_checksum dataset"):
            use()
    with h5py.File(path, "r") as handle:
        assert "row_checksum" not in handle and len(handle["models"]) == 2


def test_edited_settings_are_refused_by_verify_readers_and_writers(tmp_path, capsys):
    path = _store(tmp_path / "s.h5")  # rows without settings in their metadata: only the checksum tells
    with h5py.File(path, "r+") as handle:
        handle.attrs["settings"] = json.dumps({**FLOAT32, "dtype": "bfloat16"})
    code, output = _verify(path, capsys)
    assert code == 1 and "settings attribute" in output and "does not match its checksum" in output
    with pytest.raises(StoreError, match="does not match its checksum"):
        StoreWriter(path, TEXTS, {**FLOAT32, "dtype": "bfloat16"})
    with pytest.raises(StoreError, match="does not match its checksum"):
        open_store(path)
    assert main(["drop", str(path), "m0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(path) in error[0] and "does not match its checksum" in error[0]
    assert len(verify_rows(path)) == 1, "nothing was rewritten"


def _strip_settings_checksum(path):
    with h5py.File(path, "r+") as handle:
        del handle.attrs["settings_checksum"]


def test_stores_from_before_the_settings_checksum_open_and_gain_it(tmp_path, capsys):
    path = _store(tmp_path / "s.h5", {"dtype": "float32", "bos_policy": "full"})
    _strip_settings_checksum(path)
    assert open_store(path).models == ["m0", "m1"] and verify_rows(path) == []
    assert _verify(path, capsys)[0] == 0
    writer = StoreWriter(path, TEXTS, FLOAT32)
    writer.append("m2", np.full(2, -3.0), np.ones(2, np.int32), np.zeros(2, bool), {})
    writer.compact()
    with h5py.File(path, "r") as handle:
        assert handle.attrs["settings_checksum"] == settings_checksum(FLOAT32)
    assert open_store(path).models == ["m0", "m1", "m2"]


def test_edited_settings_of_an_old_store_are_caught_by_its_rows_metadata(tmp_path, capsys):
    path = _store(tmp_path / "s.h5", {"dtype": "float32", "bos_policy": "full"})
    _strip_settings_checksum(path)
    with h5py.File(path, "r+") as handle:
        handle.attrs["settings"] = json.dumps({**FLOAT32, "dtype": "bfloat16"})
    code, output = _verify(path, capsys)
    assert code == 1 and "says dtype='bfloat16', but m0 was computed with 'float32'" in output
    with pytest.raises(StoreError, match="but m0 was computed with 'float32'"):
        StoreWriter(path, TEXTS, {**FLOAT32, "dtype": "bfloat16"})
