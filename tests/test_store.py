"""The HDF5 store: layout, appends, a refused foreign text set, reads during writes, and
crash safety under a real SIGKILL of a real scoring subprocess, followed by a resume."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import jaxmap
from pathlib import Path

from conftest import fill_filesystem
from jaxmap.errors import StoreMismatchError
from jaxmap.store import StoreError, StoreWriter, drop, journal_directory, merge, open_store, verify_rows
from jaxmap.texts import TextSet


def _row(n, value):
    return np.full(n, value, np.float64), np.arange(n, dtype=np.int32), np.zeros(n, bool)


def _writer(path, texts=("a", "bé"), **settings):
    return StoreWriter(path, TextSet.from_texts(list(texts)), settings or {"dtype": "float32", "bos_policy": "full"})


def test_layout_is_plain_hdf5_once_compacted(tmp_path):
    texts = TextSet.from_texts(["a", "bé"])
    writer = StoreWriter(tmp_path / "s.h5", texts, {"dtype": "float32"})
    writer.append("m1", *_row(2, -1.5), {"architecture": "X"})
    # Committed to the journal: every jaxmap reader sees it, plain HDF5 not yet.
    assert open_store(tmp_path / "s.h5").models == ["m1"]
    assert len(list(journal_directory(tmp_path / "s.h5").glob("*.row"))) == 1
    writer.compact()
    assert not list(journal_directory(tmp_path / "s.h5").glob("*.row"))
    with h5py.File(tmp_path / "s.h5", "r") as handle:
        assert handle["loglik"].shape == (1, 2) and handle["loglik"].dtype == np.float64
        assert handle["ntokens"].shape == (1, 2) and handle["truncated"].dtype == bool
        assert [m.decode() for m in handle["models"][...]] == ["m1"]
        assert list(handle["text_bytes"][...]) == [1, 3]
        assert handle.attrs["text_fingerprint"] == texts.fingerprint
        assert handle["row_checksum"][0].decode().startswith("sha256:")
    store = open_store(tmp_path / "s.h5")
    assert store.models == ["m1"] and store.settings == {"dtype": "float32"}
    np.testing.assert_array_equal(store.loglik, [[-1.5, -1.5]])


def test_a_model_cannot_be_appended_twice_nor_with_a_bad_row(tmp_path):
    writer = StoreWriter(tmp_path / "s.h5", TextSet.from_texts(["a"]))
    writer.append("m1", *_row(1, -1.0), {})
    with pytest.raises(StoreError, match="already has a row"):
        writer.append("m1", *_row(1, -2.0), {})
    with pytest.raises(StoreError, match="does not have 1 entries"):
        writer.append("m2", *_row(3, -2.0), {})
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(StoreError, match="non-finite"):
            writer.append("m3", *_row(1, bad), {})
    assert open_store(tmp_path / "s.h5").models == ["m1"]


def test_rows_match_on_their_canonical_key(tmp_path):
    writer = _writer(tmp_path / "s.h5")
    writer.append("./m", *_row(2, -1.0), {"key": "/abs/m"})
    with pytest.raises(StoreError, match="already has a row"):
        writer.append("m/", *_row(2, -1.0), {"key": "/abs/m"})
    assert writer.completed_keys() == ["/abs/m"]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_foreign_text_set_or_settings_are_refused_and_store_unchanged(tmp_path):
    path = tmp_path / "s.h5"
    _writer(path, ("a", "b")).append("m1", *_row(2, -1.0), {})
    before = _digest(path)
    with pytest.raises(StoreMismatchError, match="another text set"):
        _writer(path, ("a", "c"))
    with pytest.raises(StoreMismatchError, match="dtype='float32' in the store, 'bfloat16' asked"):
        _writer(path, ("a", "b"), dtype="bfloat16", bos_policy="full")
    with pytest.raises(StoreMismatchError, match="bos_policy='full' in the store, 'paper' asked"):
        _writer(path, ("a", "b"), dtype="float32", bos_policy="paper")
    assert _digest(path) == before
    assert open_store(path).models == ["m1"]


def test_a_commit_costs_a_row_not_the_store(tmp_path):
    path = tmp_path / "s.h5"
    writer = _writer(path, [f"text {i}" for i in range(500)])
    inode = os.stat(path).st_ino
    for i in range(20):
        writer.append(f"m{i}", *_row(500, -float(i)), {})
    # The matrix file was never rewritten: each commit wrote one row file.
    assert os.stat(path).st_ino == inode
    rows = sorted(journal_directory(path).glob("*.row"))
    # Each row file holds the row's per-text columns and a header, nothing of the other rows.
    from jaxmap.store import COLUMNS

    per_text = sum(np.dtype(column.stored).itemsize for column in COLUMNS)
    assert len(rows) == 20 and all(r.stat().st_size < 500 * per_text + 2048 for r in rows)
    assert open_store(path).models == [f"m{i}" for i in range(20)]


def test_the_journal_is_compacted_once_it_outgrows_the_matrix(tmp_path):
    path = tmp_path / "s.h5"
    writer = _writer(path)
    for i in range(70):
        writer.append(f"m{i}", *_row(2, -float(i)), {})
    assert len(list(journal_directory(path).glob("*.row"))) < 70
    assert open_store(path).models == [f"m{i}" for i in range(70)]


def test_a_crash_inside_a_commit_or_compaction_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    writer = _writer(path)
    writer.append("m1", *_row(2, -1.0), {})

    def crash(*_):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StoreError, match="simulated crash"):
        writer.append("m2", *_row(2, -2.0), {})
    monkeypatch.undo()
    assert open_store(path).models == ["m1"]
    assert not list(tmp_path.rglob(".*tmp-*")), "the half-written row file is removed"

    # A compaction killed after its rename but before it retired the journal rows.
    monkeypatch.setattr(Path, "unlink", lambda *a, **k: None)
    writer.compact()
    monkeypatch.undo()
    assert len(list(journal_directory(path).glob("*.row"))) == 1, "the row file is still there"
    assert open_store(path).models == ["m1"], "and is not counted twice"
    writer.append("m2", *_row(2, -2.0), {})
    assert open_store(path).models == ["m1", "m2"]


def _damage(path, value):
    """Flip one byte of the float64 ``value`` where it is stored in ``path``."""
    data = bytearray(path.read_bytes())
    where = data.find(np.float64(value).tobytes())
    assert where >= 0
    data[where + 3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_bytes_are_found_and_named(tmp_path):
    path = tmp_path / "s.h5"
    writer = _writer(path)
    writer.append("good", *_row(2, -1.25), {})
    writer.append("victim", *_row(2, -123.456789), {})
    writer.compact()
    _damage(path, -123.456789)
    with pytest.raises(StoreError, match=r"row 1 \(victim\) fails its checksum"):
        open_store(path)
    assert [(where, model) for where, model, _ in verify_rows(path)] == [("row 1", "victim")]
    with pytest.raises(StoreError, match="victim"):
        _writer(path)  # no appending to a damaged store
    assert drop(path, ["victim"]) == ["victim"]
    assert open_store(path).models == ["good"] and verify_rows(path) == []

    writer = _writer(path)
    writer.append("journal-victim", *_row(2, -98.7654321), {})
    row_file = next(journal_directory(path).glob("*.row"))
    _damage(row_file, -98.7654321)
    with pytest.raises(StoreError, match=r"journal row \d+ \(journal-victim\) fails its checksum"):
        open_store(path)


def test_drop_removes_rows_by_name_key_or_path(tmp_path):
    path = tmp_path / "s.h5"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    writer = _writer(path)
    writer.append("a", *_row(2, -1.0), {})
    writer.compact()
    writer.append("./model", *_row(2, -2.0), {"key": str(model_dir.resolve())})
    writer.append("c", *_row(2, -3.0), {"key": "org/c@abc"})
    with pytest.raises(StoreError, match="no row for nope"):
        drop(path, ["nope", "a"])
    assert open_store(path).models == ["a", "./model", "c"]
    assert drop(path, [str(model_dir) + "/", "org/c@abc"]) == ["./model", "c"]
    assert open_store(path).models == ["a"]
    writer.append("c", *_row(2, -3.0), {"key": "org/c@abc"})  # a dropped model can come back
    assert open_store(path).models == ["a", "c"]


def test_merge_joins_shards_and_refuses_mismatches(tmp_path):
    parts = [tmp_path / f"part{i}.h5" for i in range(2)]
    for i, part in enumerate(parts):
        writer = _writer(part)
        writer.append(f"m{i}", *_row(2, -float(i)), {})
        writer.append(f"n{i}", *_row(2, -float(i) - 10), {})
    merged = merge(parts, tmp_path / "all.h5")
    assert merged.models == ["m0", "n0", "m1", "n1"]
    np.testing.assert_array_equal(merged.loglik[:, 0], [0, -10, -1, -11])
    before = _digest(tmp_path / "all.h5")
    with pytest.raises(StoreError, match="m0 has a row in both"):
        merge([parts[0]], tmp_path / "all.h5")
    with pytest.raises(StoreError, match="also one of the stores"):
        merge([tmp_path / "all.h5"], tmp_path / "all.h5")
    other = tmp_path / "other.h5"
    _writer(other, dtype="bfloat16", bos_policy="full").append("x", *_row(2, -1.0), {})
    with pytest.raises(StoreMismatchError, match="other settings"):
        merge([parts[0], other], tmp_path / "new.h5")
    assert _digest(tmp_path / "all.h5") == before
    assert not (tmp_path / "new.h5").exists()


def test_format_1_stores_are_read_and_upgraded(tmp_path):
    path = tmp_path / "old.h5"
    texts = TextSet.from_texts(["a", "b"])
    string = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as handle:  # the layout jaxmap 0.1 wrote
        handle.attrs.update(format="jaxmap-store", format_version=1, text_fingerprint=texts.fingerprint, n_texts=2, created_by="old")
        handle.create_dataset("texts", data=list(texts.texts), dtype=string)
        handle.create_dataset("text_ids", data=list(texts.ids), dtype=string)
        handle.create_dataset("text_bytes", data=np.array([1, 1]))
        handle.create_dataset("loglik", data=[[-1.0, -2.0]], maxshape=(None, 2))
        handle.create_dataset("ntokens", data=np.ones((1, 2), np.int32), maxshape=(None, 2))
        handle.create_dataset("truncated", data=np.zeros((1, 2), bool), maxshape=(None, 2))
        handle.create_dataset("models", data=["old-model"], dtype=string, maxshape=(None,))
        handle.create_dataset("model_meta", data=['{"dtype": "float32", "bos_policy": "full"}'], dtype=string, maxshape=(None,))
    assert open_store(path).models == ["old-model"]
    assert verify_rows(path)[0][2].startswith("no checksum")
    with pytest.raises(StoreMismatchError, match="dtype"):
        StoreWriter(path, texts, {"dtype": "bfloat16"})
    StoreWriter(path, texts, {"dtype": "float32", "bos_policy": "full"}).append("new", *_row(2, -3.0), {})
    store = open_store(path)
    assert store.models == ["old-model", "new"] and store.settings == {"bos_policy": "full", "dtype": "float32"}
    assert verify_rows(path) == []
    np.testing.assert_array_equal(store.loglik[0], [-1.0, -2.0])


def test_a_full_disk_leaves_the_store_as_it_was(small_filesystem):
    path = small_filesystem / "s.h5"
    n = 5_000
    writer = _writer(path, [f"t{i}" for i in range(n)])
    writer.append("m0", *_row(n, -1.0), {})
    writer.compact()
    writer.append("m1", *_row(n, -2.0), {})
    before = _digest(path)
    fill_filesystem(small_filesystem, leave_bytes=40_000)  # less than one row of 5,000 texts
    with pytest.raises(StoreError, match="not enough free disk space|disk is full"):
        writer.append("m2", *_row(n, -3.0), {})
    with pytest.raises(StoreError, match="not enough free disk space|disk is full"):
        writer.compact()
    # The check before writing can be beaten by a race; the write itself must fail cleanly too.
    from jaxmap import store as store_module

    original = store_module._check_free_space
    store_module._check_free_space = lambda *a: None
    try:
        with pytest.raises(StoreError, match="disk is full"):
            writer.append("m2", *_row(n, -3.0), {})
    finally:
        store_module._check_free_space = original
    assert _digest(path) == before
    assert open_store(path).models == ["m0", "m1"]
    assert not [p for p in small_filesystem.rglob("*") if ".tmp-" in p.name], "no partial copy left"
    (small_filesystem / "filler").unlink()
    writer.append("m2", *_row(n, -3.0), {})
    assert open_store(path).models == ["m0", "m1", "m2"]


def _score_command(models, text_file, store):
    return [sys.executable, "-m", "jaxmap.cli", "score", *map(str, models), "--texts", str(text_file), "--out", str(store), "--quiet", "--batch-tokens", "128"]


def _rows(path):
    try:
        return open_store(path).models
    except StoreError:
        return []


def test_sigkill_at_any_moment_keeps_finished_rows_and_resume_fills_the_rest(tiny_models, long_text_file, tmp_path):
    text_file = long_text_file
    reference = jaxmap.score([str(m) for m in tiny_models], text_file, out=tmp_path / "reference.h5", progress=False, batch_tokens=128)
    store = tmp_path / "killed.h5"
    rng = np.random.default_rng(0)
    kills = 0
    for attempt in range(6):
        rows_before = len(_rows(store))
        if rows_before == len(tiny_models):
            break
        process = subprocess.Popen(_score_command(tiny_models, text_file, store), stderr=subprocess.DEVNULL)
        # Wait until this run has committed a row, then kill it at a random moment.
        deadline = time.time() + 120
        while len(_rows(store)) <= rows_before and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        seen = open_store(store)
        assert len(seen.models) >= rows_before, "a finished row was lost"
        assert len(set(seen.models)) == len(seen.models)
        for model, row in zip(seen.models, seen.loglik):
            np.testing.assert_array_equal(row, reference.loglik[reference.models.index(model)])
    assert kills >= 1
    partial = open_store(store)
    first_times = {m: meta["time"] for m, meta in zip(partial.models, partial.model_meta)}
    subprocess.run(_score_command(tiny_models, text_file, store), check=True)
    final = open_store(store)
    assert sorted(final.models) == sorted(reference.models)
    for model, meta in zip(final.models, final.model_meta):
        if model in first_times:
            assert meta["time"] == first_times[model], f"{model} was recomputed"
    for model, row in zip(final.models, final.loglik):
        np.testing.assert_array_equal(row, reference.loglik[reference.models.index(model)])


def test_store_can_be_read_while_being_written(tiny_models, long_text_file, tmp_path):
    text_file = long_text_file
    store = tmp_path / "live.h5"
    process = subprocess.Popen(_score_command(tiny_models, text_file, store), stderr=subprocess.DEVNULL)
    counts = []
    while process.poll() is None:
        if store.exists():
            counts.append(len(open_store(store).models))
        time.sleep(0.02)
    assert process.returncode == 0
    counts.append(len(open_store(store).models))
    assert counts == sorted(counts), "rows only ever appear"
    assert counts[-1] == len(tiny_models) and len(set(counts)) > 1


_APPENDER = """
import sys
import numpy as np
from jaxmap import store
from jaxmap.texts import TextSet

store._COMPACT_AFTER_ROWS = 2  # compact every few rows, so kills land inside compactions too
writer = store.StoreWriter(sys.argv[1], TextSet.from_texts([f"text {i}" for i in range(300)]), {"dtype": "float32"})
done = {int(m[1:]) for m in writer.completed_keys()}
for i in range(100000):
    if i not in done:
        writer.append(f"m{i}", np.full(300, -float(i)), np.ones(300, np.int32), np.zeros(300, bool), {})
        print(i, flush=True)
"""


def test_sigkill_during_commits_and_compactions_never_loses_or_duplicates_a_row(tmp_path):
    path = tmp_path / "s.h5"
    rng = np.random.default_rng(1)
    committed: set[int] = set()
    for _ in range(6):
        process = subprocess.Popen([sys.executable, "-c", _APPENDER, str(path)], stdout=subprocess.PIPE, text=True)
        first = process.stdout.readline()  # wait until this run commits
        time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        reported = first + process.stdout.read()
        process.wait()
        committed |= {int(line) for line in reported.split()}
        store = open_store(path)
        indices = [int(m[1:]) for m in store.models]
        assert len(indices) == len(set(indices)), "a row appears twice"
        assert committed <= set(indices), "a row reported as committed was lost"
        np.testing.assert_array_equal(store.loglik[:, 0], -np.array(indices, float))
        assert verify_rows(path) == []
    assert len(committed) > 20
