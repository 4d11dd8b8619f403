"""The command line under bad input and interruption, across real process boundaries: one line
on stderr and a documented exit status, and nothing that was already there is lost."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxmap
from conftest import fill_filesystem
from jaxmap.cli import main
from jaxmap.store import StoreWriter, open_store
from jaxmap.texts import TextSet


def _jaxmap(*args, **kwargs):
    return [sys.executable, "-m", "jaxmap.cli", *map(str, args)]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "map.h5"
    texts = TextSet.from_texts([f"text number {i}" for i in range(40)])
    writer = StoreWriter(path, texts, {"dtype": "float32", "bos_policy": "full"})
    rng = np.random.default_rng(0)
    base = -rng.gamma(20, 5, 40)
    for k in range(6):
        writer.append(f"m{k}", base + rng.normal(0, 1 + k, 40), np.ones(40, np.int32), np.zeros(40, bool), {})
    writer.compact()
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["kl", "{store}", "--out", "{store}"],
        ["map", "{store}", "--out", "{out}/m.png", "--html", "{store}", "--method", "pca"],
        ["resample", "{store}", "--n", "5", "--out", "{store}"],
        ["outliers", "{store}", "--model", "m1", "--out", "{store}"],
        ["chunk", "{out}/doc.txt", "--out", "{out}/doc.txt"],
    ],
    ids=["kl", "map-html", "resample", "outliers", "chunk"],
)
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(command, small_store, tmp_path, capsys):
    (tmp_path / "doc.txt").write_text("word " * 400)
    argv = [part.format(store=small_store, out=tmp_path) for part in command]
    inputs = [small_store, tmp_path / "doc.txt"]
    before = [_digest(p) for p in inputs]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "is also an input of this command" in error[0]
    assert [_digest(p) for p in inputs] == before


def test_a_failing_command_leaves_its_existing_output(small_store, tmp_path, capsys):
    out = tmp_path / "kl.csv"
    assert main(["kl", str(small_store), "--out", str(out)]) == 0
    before = _digest(out)
    # --bits-per-byte on a plain matrix fails after the output was named: the old file stays.
    matrix = tmp_path / "L.npy"
    np.save(matrix, open_store(small_store).loglik)
    assert main(["kl", str(matrix), "--out", str(out), "--bits-per-byte"]) == 2
    assert _digest(out) == before
    chunks = tmp_path / "chunks.jsonl"
    (tmp_path / "good.txt").write_text("word " * 400)
    assert main(["chunk", str(tmp_path / "good.txt"), "--out", str(chunks)]) == 0
    before = _digest(chunks)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    assert main(["chunk", str(tmp_path / "good.txt"), str(tmp_path / "bad.txt"), "--out", str(chunks)]) == 2
    assert "bad.txt: not UTF-8" in capsys.readouterr().err
    assert _digest(chunks) == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["kl", "{tmp}/missing.h5", "--out", "{tmp}/k.csv"], "missing.h5"),
        (["kl", "{tmp}", "--out", "{tmp}/k.csv"], str),
        (["kl", "{tmp}/empty.h5", "--out", "{tmp}/k.csv"], "empty.h5"),
        (["kl", "{tmp}/garbage.h5", "--out", "{tmp}/k.csv"], "garbage.h5"),
        (["info", "{tmp}/garbage.h5"], "garbage.h5"),
        (["drop", "{tmp}/garbage.h5", "m0"], "garbage.h5"),
        (["merge", "{tmp}/missing.h5", "--out", "{tmp}/m.h5"], "missing.h5"),
        (["score", "{tmp}/no-model", "--texts", "{tmp}/missing.jsonl", "--out", "{tmp}/s.h5"], "missing.jsonl"),
        (["score", "{tmp}/no-model", "--texts", "{tmp}/empty.h5", "--out", "{tmp}/s.h5"], "empty.h5"),
        (["score", "m", "--texts", "{tmp}", "--out", "{tmp}/s.h5"], "is a directory"),
        (["score", "m", "--texts", "{tmp}/t.jsonl", "--out", "{tmp}/s.h5", "--shard", "2/2"], "--shard"),
        (["score", "m", "--texts", "{tmp}/t.jsonl", "--out", "{tmp}/s.h5", "--mesh", "data=x"], "data=x"),
        (["chunk", "{tmp}/missing.txt", "--out", "{tmp}/c.jsonl"], "missing.txt"),
    ],
)
def test_bad_inputs_are_one_line_with_exit_2(argv, expected, tmp_path, capsys):
    (tmp_path / "empty.h5").write_bytes(b"")
    (tmp_path / "garbage.h5").write_bytes(os.urandom(4096))
    (tmp_path / "t.jsonl").write_text('{"text": "a"}\n')
    code = main([a.format(tmp=tmp_path) for a in argv])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1, error
    assert "Traceback" not in error[0]
    if expected is not str:
        assert expected in error[0]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_job_keeping_every_committed_row(tiny_models, long_text_file, tmp_path, signum, status):
    texts = long_text_file
    store = tmp_path / "s.h5"
    process = subprocess.Popen(
        _jaxmap("score", *tiny_models, "--texts", texts, "--out", store, "--quiet", "--batch-tokens", 128),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if store.exists() and open_store(store).models:
            break
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    kept = open_store(store).models
    if process.returncode == 0:
        pytest.skip("the job finished before the signal")
    assert process.returncode == status, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr
    assert f"stopped by {signal.Signals(signum).name}; committed rows are kept" in lines[0]
    assert 1 <= len(kept) < len(tiny_models)
    # The next run scores only what is missing.
    subprocess.run(_jaxmap("score", *tiny_models, "--texts", texts, "--out", store, "--quiet", "--batch-tokens", 128), check=True, capture_output=True)
    assert sorted(open_store(store).models) == sorted(map(str, tiny_models))


def test_interrupts_during_start_up_and_twice_never_crash(tiny_models, long_text_file, tmp_path):
    texts = long_text_file
    command = _jaxmap("score", *tiny_models, "--texts", texts, "--out", tmp_path / "s.h5", "--quiet")
    for delay, signals in ((0.3, 1), (1.0, 1), (4.0, 2), (6.0, 3)):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        for _ in range(signals):
            process.send_signal(signal.SIGINT)
            time.sleep(0.05)
        _, stderr = process.communicate(timeout=60)
        if process.returncode == 0:
            continue  # it finished first
        assert process.returncode == 130, (delay, signals, stderr)
        assert "Traceback" not in stderr and "Segmentation" not in stderr, stderr
        assert 1 <= len(stderr.strip().splitlines()) <= 2
    if (tmp_path / "s.h5").exists():
        assert len(set(open_store(tmp_path / "s.h5").models)) == len(open_store(tmp_path / "s.h5").models)


def test_a_full_disk_is_one_line_and_keeps_the_store(tiny_models, text_file, small_filesystem):
    store = small_filesystem / "s.h5"
    jaxmap.score([str(tiny_models[0])], text_file, out=store, progress=False)
    before = _digest(store)
    fill_filesystem(small_filesystem, leave_bytes=4096)
    result = subprocess.run(
        _jaxmap("score", tiny_models[0], tiny_models[1], "--texts", text_file, "--out", store, "--quiet"),
        capture_output=True, text=True,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ("disk is full" in lines[0] or "not enough free disk space" in lines[0])
    assert _digest(store) == before and open_store(store).models == [str(tiny_models[0])]
    assert not [p for p in small_filesystem.rglob("*") if ".tmp-" in p.name]


def test_damaged_bytes_in_a_real_file_are_found_named_and_dropped(tmp_path, capsys):
    path = tmp_path / "map.h5"
    texts = TextSet.from_texts([f"t{i}" for i in range(8)])
    writer = StoreWriter(path, texts, {"dtype": "float32"})
    for k, value in enumerate((-11.5, -22.25, -987.654321)):
        writer.append(f"m{k}", np.full(8, value) - np.arange(8), np.ones(8, np.int32), np.zeros(8, bool), {})
    writer.compact()
    data = bytearray(path.read_bytes())
    where = data.find(np.float64(-987.654321 - 3).tobytes())
    data[where + 2] ^= 0x5A
    path.write_bytes(bytes(data))
    assert main(["info", str(path), "--verify"]) == 1
    out, err = capsys.readouterr()
    assert "row 2 (m2): checksum mismatch" in out and "1 damaged row" in err
    assert main(["kl", str(path), "--out", str(tmp_path / "kl.csv")]) == 2
    assert "row 2 (m2) fails its checksum" in capsys.readouterr().err
    assert not (tmp_path / "kl.csv").exists()
    assert main(["drop", str(path), "m2"]) == 0
    assert main(["info", str(path), "--verify"]) == 0
    assert "every checksum matches" in capsys.readouterr().out
    assert open_store(path).models == ["m0", "m1"]
