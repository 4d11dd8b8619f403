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
from jaxmap.store import StoreError, StoreWriter, open_store
from jaxmap.texts import TextSet


def _row(n, value):
    return np.full(n, value, np.float64), np.arange(n, dtype=np.int32), np.zeros(n, bool)


def test_layout_is_plain_hdf5(tmp_path):
    texts = TextSet.from_texts(["a", "bé"])
    writer = StoreWriter(tmp_path / "s.h5", texts)
    writer.append("m1", *_row(2, -1.5), {"architecture": "X"})
    with h5py.File(tmp_path / "s.h5", "r") as handle:
        assert handle["loglik"].shape == (1, 2) and handle["loglik"].dtype == np.float64
        assert handle["ntokens"].shape == (1, 2) and handle["truncated"].dtype == bool
        assert [m.decode() for m in handle["models"][...]] == ["m1"]
        assert list(handle["text_bytes"][...]) == [1, 3]
        assert handle.attrs["text_fingerprint"] == texts.fingerprint


def test_a_model_cannot_be_appended_twice(tmp_path):
    writer = StoreWriter(tmp_path / "s.h5", TextSet.from_texts(["a"]))
    writer.append("m1", *_row(1, -1.0), {})
    with pytest.raises(StoreError, match="already has a row"):
        writer.append("m1", *_row(1, -2.0), {})
    with pytest.raises(StoreError, match="does not have 1 entries"):
        writer.append("m2", *_row(3, -2.0), {})
    assert open_store(tmp_path / "s.h5").models == ["m1"]


def test_foreign_text_set_is_refused_and_store_unchanged(tmp_path):
    path = tmp_path / "s.h5"
    StoreWriter(path, TextSet.from_texts(["a", "b"])).append("m1", *_row(2, -1.0), {})
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="another text set"):
        StoreWriter(path, TextSet.from_texts(["a", "c"]))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_failed_commit_leaves_the_live_file_and_is_cleaned_up(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    writer = StoreWriter(path, TextSet.from_texts(["a"]))
    writer.append("m1", *_row(1, -1.0), {})

    def crash(*_):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        writer.append("m2", *_row(1, -2.0), {})
    monkeypatch.undo()
    assert open_store(path).models == ["m1"]
    assert list(tmp_path.glob(".s.h5.tmp-*")), "the half-made copy is left behind by the crash"
    writer.append("m2", *_row(1, -2.0), {})
    assert open_store(path).models == ["m1", "m2"]
    assert not list(tmp_path.glob(".s.h5.tmp-*")), "the next writer removes stale copies"


def _score_command(models, text_file, store):
    return [sys.executable, "-m", "jaxmap.cli", "score", *map(str, models), "--texts", str(text_file), "--out", str(store), "--quiet", "--batch-tokens", "128"]


def _rows(path):
    try:
        return open_store(path).models
    except StoreError:
        return []


def test_sigkill_at_any_moment_keeps_finished_rows_and_resume_fills_the_rest(tiny_models, text_file, tmp_path):
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


def test_store_can_be_read_while_being_written(tiny_models, text_file, tmp_path):
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
