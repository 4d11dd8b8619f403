"""Store formats: a store laid out by hand as format 2 has always been written (matrix and
journal) opens, verifies and takes new rows; a per-text column added to the column table with a
format-version bump reads older stores, keeps their checksums and commits its own values."""

from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest

from jaxmap import store as store_module
from jaxmap.cli import main
from jaxmap.store import StoreError, StoreWriter, journal_directory, open_store, settings_checksum, verify_rows
from jaxmap.texts import TextSet

TEXTS = TextSet.from_texts(["a", "bé", "ccc"])
SETTINGS = {"bos_policy": "full", "dtype": "float32"}
STRING = h5py.string_dtype("utf-8")


def _format_2_checksum(model, meta_json, loglik, ntokens, truncated, token_logprobs=None):
    """The row checksum as format 2 defines it (docs/store.md), written out independently."""
    digest = hashlib.sha256(model.encode() + b"\0" + meta_json.encode() + b"\0")
    digest.update(np.asarray(loglik, "<f8").tobytes() + np.asarray(ntokens, "<i4").tobytes())
    digest.update(np.asarray(truncated, "u1").tobytes())
    if token_logprobs is not None:
        digest.update(b"\0token_logprobs\0" + np.asarray(token_logprobs, "<f4").tobytes())
    return "sha256:" + digest.hexdigest()


# Two matrix rows (the second with token log-probs) and one journal row.
ROWS = [
    ("m0", {"key": "/abs/m0", "dtype": "float32"}, [-1.5, -2.25, -3.0], [1, 2, 3], [False, False, True], None),
    ("m1", {"key": "/abs/m1"}, [-0.5, -1.0, -4.0], [1, 1, 2], [True, False, False], [-0.5, -1.0, -1.5, -2.5]),
    ("m2", {"key": "/abs/m2"}, [-7.0, -8.0, -9.0], [2, 2, 2], [False, True, False], None),
]


def _write_format_2_store(path):
    """Write, without jaxmap's writer, the files format 2 consists of: the matrix with rows
    m0 and m1, and m2 as journal row 3 in the row-file layout of that format."""
    matrix_rows = [(m, json.dumps(meta, sort_keys=True), *rest) for m, meta, *rest in ROWS]
    with h5py.File(path, "w") as handle:
        handle.attrs.update(
            format="jaxmap-store", format_version=2, text_fingerprint=TEXTS.fingerprint, n_texts=3,
            settings=json.dumps(SETTINGS, sort_keys=True), settings_checksum=settings_checksum(SETTINGS),
            created_by="jaxmap before the column table", journal_sequence=2,
        )
        handle.create_dataset("texts", data=list(TEXTS.texts), dtype=STRING)
        handle.create_dataset("text_ids", data=list(TEXTS.ids), dtype=STRING)
        handle.create_dataset("text_bytes", data=np.array(TEXTS.byte_lengths, np.int64))
        kept = matrix_rows[:2]
        for index, (name, dtype) in enumerate((("loglik", np.float64), ("ntokens", np.int32), ("truncated", bool))):
            handle.create_dataset(name, data=np.array([row[2 + index] for row in kept], dtype), maxshape=(None, 3))
        handle.create_dataset("token_offsets", data=np.array([[-1] * 4, [0, 1, 2, 4]], np.int64))
        handle.create_dataset("token_logprob", data=np.array(ROWS[1][5], np.float32), maxshape=(None,))
        handle.create_dataset("models", data=[row[0] for row in kept], dtype=STRING, maxshape=(None,))
        handle.create_dataset("model_meta", data=[row[1] for row in kept], dtype=STRING, maxshape=(None,))
        handle.create_dataset(
            "row_checksum", data=[_format_2_checksum(*row) for row in kept], dtype=STRING, maxshape=(None,)
        )
    model, meta_json, loglik, ntokens, truncated, _ = matrix_rows[2]
    header = json.dumps({"model": model, "meta": meta_json, "checksum": _format_2_checksum(*matrix_rows[2])})
    journal = journal_directory(path)
    journal.mkdir()
    (journal / "000000000003.row").write_bytes(
        b"JAXMAP-ROW 1\n" + len(header.encode()).to_bytes(8, "little") + header.encode()
        + np.asarray(loglik, "<f8").tobytes() + np.asarray(ntokens, "<i4").tobytes()
        + np.asarray(truncated, "u1").tobytes()
    )
    return path


def _assert_holds_the_rows(store):
    assert store.models == ["m0", "m1", "m2"]
    np.testing.assert_array_equal(store.loglik, [row[2] for row in ROWS])
    np.testing.assert_array_equal(store.ntokens, [row[3] for row in ROWS])
    np.testing.assert_array_equal(store.truncated, [row[4] for row in ROWS])
    assert store.token_logprobs[0] is None and store.token_logprobs[2] is None
    np.testing.assert_array_equal(store.text_token_logprobs(1, 2), [-1.5, -2.5])


def test_a_format_2_store_opens_verifies_and_takes_rows(tmp_path, capsys):
    path = _write_format_2_store(tmp_path / "old.h5")
    _assert_holds_the_rows(open_store(path))
    assert verify_rows(path) == []
    assert main(["info", str(path), "--verify"]) == 0
    assert "every checksum matches" in capsys.readouterr().out
    before = open_store(path).row_checksums
    writer = StoreWriter(path, TEXTS, SETTINGS)
    writer.append("m3", np.full(3, -1.0), np.ones(3, np.int32), np.zeros(3, bool), {})
    writer.compact()
    store = open_store(path)
    assert store.models[:3] == ["m0", "m1", "m2"] and store.row_checksums[:3] == before
    assert verify_rows(path) == []


def test_format_3_holds_is_greedy_since_3_filled_false():
    column = {c.name: c for c in store_module.COLUMNS}["is_greedy"]
    assert store_module.FORMAT_VERSION == 3
    assert (column.since, column.fill, column.dtype) == (3, False, np.dtype(bool))


def test_a_new_column_reads_older_stores_and_commits_its_values(tmp_path, capsys):
    path = _write_format_2_store(tmp_path / "old.h5")
    old = open_store(path)
    _assert_holds_the_rows(old)
    np.testing.assert_array_equal(old.columns["is_greedy"], np.zeros((3, 3), bool))
    assert verify_rows(path) == []
    # The first writer upgrades the store; the older rows keep their checksums.
    writer = StoreWriter(path, TEXTS, SETTINGS)
    with h5py.File(path, "r") as handle:
        assert handle.attrs["format_version"] == 3 and handle["is_greedy"].shape == (3, 3)
    greedy = np.array([True, False, True])
    writer.append("m3", np.full(3, -1.0), np.ones(3, np.int32), np.zeros(3, bool), {}, is_greedy=greedy)
    journal_store = open_store(path)
    np.testing.assert_array_equal(journal_store.columns["is_greedy"][3], greedy)
    writer.compact()
    store = open_store(path)
    assert store.row_checksums[:3] == old.row_checksums
    np.testing.assert_array_equal(store.columns["is_greedy"], [[False] * 3] * 3 + [greedy])
    assert verify_rows(path) == [] and main(["info", str(path), "--verify"]) == 0
    # The new column is covered by its row's checksum.
    with h5py.File(path, "r+") as handle:
        handle["is_greedy"][3, 1] = True
    assert [(where, model) for where, model, _ in verify_rows(path)] == [("row 3", "m3")]
    with pytest.raises(StoreError, match="no per-text column is_sampled"):
        writer.append("m4", np.full(3, -1.0), np.ones(3, np.int32), np.zeros(3, bool), {}, is_sampled=greedy)
