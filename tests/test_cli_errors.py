"""The command line under bad input and interruption, across real process boundaries: one line
on stderr and a documented exit status, and nothing that was already there is lost."""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import shutil
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


def _run(argv, capsys) -> tuple[int, list[str]]:
    """Run the command in this process: its exit status and its stderr lines."""
    try:
        code = main([str(part) for part in argv])
    except SystemExit as leaving:  # argparse's usage errors
        code = leaving.code
    return code, capsys.readouterr().err.strip().splitlines()


def _temporaries(directory):
    return [path for path in directory.rglob("*") if ".tmp-" in path.name]


@pytest.fixture(scope="module")
def subset_file(small_store, tmp_path_factory):
    """A subset drawn from the small store, as `jaxmap resample` writes it."""
    path = tmp_path_factory.mktemp("subset") / "subset.jsonl"
    assert main(["resample", str(small_store), "--n", "8", "--out", str(path)]) == 0
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["kl", "{store}", "--out", "{store}"],
        ["kl", "{store}", "--out", "{out}/hard-link.h5"],
        ["kl", "{store}", "--out", "{out}/symbolic-link.csv"],
        ["kl", "{store}", "--out", "{out}/./../{out.name}/hard-link.h5"],
        ["map", "{store}", "--out", "{store}", "--method", "pca"],
        ["map", "{store}", "--out", "{out}/m.png", "--html", "{store}", "--method", "pca"],
        ["map", "{store}", "--out", "{out}/m.png", "--coords", "{out}/meta.csv", "--meta", "{out}/meta.csv",
         "--color-by", "family"],
        ["resample", "{store}", "--n", "5", "--out", "{store}"],
        ["resample", "{store}", "--curve", "{out}/hard-link.h5"],
        ["outliers", "{store}", "--model", "m1", "--out", "{store}"],
        ["add", "{store}", "{out}/no-model", "--subset", "{subset}", "--out", "{subset}"],
        ["add", "{store}", "{out}/no-model", "--subset", "{subset}", "--kl-out", "{store}"],
        ["add", "{out}/map.h5", "{out}/no-model", "--subset", "{out}/map.jsonl"],  # default --out: map.h5
        ["chunk", "{out}/doc.txt", "--out", "{out}/doc.txt"],
        ["chunk", "{out}/doc.txt", "{out}/meta.csv", "--out", "{out}/meta.csv"],
    ],
    ids=["kl", "kl-hard-link", "kl-symbolic-link", "kl-dotted-path", "map", "map-html", "map-coords",
         "resample", "resample-curve", "outliers", "add-out", "add-kl-out", "add-default-out", "chunk",
         "chunk-second"],
)
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(
    command, small_store, subset_file, tmp_path, capsys
):
    (tmp_path / "doc.txt").write_text("word " * 400)
    (tmp_path / "meta.csv").write_text("model,family\n" + "".join(f"m{k},f{k % 2}\n" for k in range(6)))
    os.link(small_store, tmp_path / "hard-link.h5")
    os.symlink(small_store, tmp_path / "symbolic-link.csv")
    os.link(small_store, tmp_path / "map.h5")
    os.link(subset_file, tmp_path / "map.jsonl")
    argv = [part.format(store=small_store, subset=subset_file, out=tmp_path) for part in command]
    inputs = [small_store, subset_file, tmp_path / "doc.txt", tmp_path / "meta.csv"]
    before = [_digest(p) for p in inputs]
    code, error = _run(argv, capsys)
    assert code == 2 and len(error) == 1, error
    assert "is also an input of this command" in error[0]
    assert [_digest(p) for p in inputs] == before
    assert not _temporaries(tmp_path)


def test_an_output_named_twice_is_refused(small_store, tmp_path, capsys):
    code, error = _run(
        ["resample", small_store, "--n", "5", "--out", tmp_path / "x.png", "--curve", tmp_path / "x.png"], capsys
    )
    assert code == 2 and len(error) == 1 and "given twice as an output" in error[0]
    assert not (tmp_path / "x.png").exists()


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
    assert not _temporaries(tmp_path)


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_command_writing_several_files_keeps_them_all_when_one_fails(
    small_store, tmp_path, monkeypatch, capsys
):
    """The map's PNG is written, then its HTML fails: neither replaces the earlier files."""
    png, html = tmp_path / "m.png", tmp_path / "m.html"
    argv = ["map", small_store, "--out", png, "--html", html, "--method"]
    assert _run([*argv, "pca"], capsys)[0] == 0
    before = [_digest(png), _digest(html)]
    monkeypatch.setattr("jaxmap.analysis.plots.map_html", _disk_full)
    code, error = _run([*argv, "mds"], capsys)
    assert code == 2 and error == [f"jaxmap map: error: {png}, {html}: cannot write (the disk is full)"]
    assert [_digest(png), _digest(html)] == before
    # The resampling curve fails after the subset was drawn: the old subset stays.
    subset, curve = tmp_path / "s.jsonl", tmp_path / "c.png"
    argv = ["resample", small_store, "--n", "6", "--out", subset, "--curve", curve, "--curve-seeds", "1"]
    assert _run(argv, capsys)[0] == 0
    before = [_digest(subset), _digest(curve)]
    monkeypatch.setattr("jaxmap.analysis.plots.plot_resampling_curve", _disk_full)
    code, error = _run([*argv[:-2], "--seed", "1", "--curve-seeds", "1"], capsys)
    assert code == 2 and "the disk is full" in error[-1]
    assert [_digest(subset), _digest(curve)] == before
    assert not _temporaries(tmp_path)


# Every subcommand with a valid invocation; {name} marks a file it reads, which the scan below
# replaces with a bad one. A new subcommand must be added here (the scan checks the list).
_INVOCATIONS = {
    "score": ["{tmp}/no-model", "--texts", "{texts}", "--out", "{tmp}/new.h5"],
    "plan": ["{tmp}/no-model", "--texts", "{texts}", "--devices", "1xcpu", "--json", "{tmp}/plan.json"],
    "info": ["{store}"],
    "drop": ["{store}", "m0"],
    "merge": ["{store}", "--out", "{tmp}/merged.h5"],
    "compact": ["{store}"],
    "chunk": ["{document}", "--out", "{tmp}/chunks.jsonl"],
    "kl": ["{store}", "--out", "{tmp}/kl.csv"],
    "map": ["{store}", "--out", "{tmp}/map.png", "--method", "pca", "--meta", "{meta}", "--color-by", "family"],
    "predict": ["{store}", "--scores", "{scores}", "--target", "score"],
    "resample": ["{store}", "--n", "5", "--out", "{tmp}/subset.jsonl"],
    "add": ["{store}", "{tmp}/no-model", "--subset", "{subset}", "--out", "{tmp}/added.h5"],
    "outliers": ["{store}", "--model", "m1"],
    "tree": ["{store}", "--out", "{tmp}/tree.nwk", "--plot", "{tmp}/tree.png"],
    "demo": ["--out", "{demo}"],
    "ica": ["{store}", "--components", "2", "--out", "{tmp}/axes.csv"],
    "uncertainty": ["{store}", "--out", "{tmp}/u.png", "--bootstrap", "3"],
    "trajectory": ["{store}", "--path", "m0", "m1", "m2", "--no-weights"],
    "lineage": ["{store}", "--parents", "{parents}"],
    "train": ["--model", "{tmp}/no-model", "--texts", "{texts}", "--out", "{tmp}/run"],
    "true-kl": ["{store}", "m0", "m1", "--samples", "2"],
    "accuracy": ["{store}", "--out", "{tmp}/accuracy.csv"],
}
# Subcommands that read no file named on the command line (their sources are installed).
_NO_FILE_INPUTS = {"questions"}


def _bad_files(directory):
    """A bad file of every kind, by name: what a person may give instead of the right one."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    (directory / "a-directory").mkdir()
    (directory / "empty-file").write_bytes(b"")
    (directory / "random-bytes").write_bytes(rng.bytes(3000))
    (directory / "prose.txt").write_text("Call me Ishmael.\n")
    (directory / "json-list.jsonl").write_text('["text"]\n')
    return {name: directory / name for name in ("missing-file", *sorted(p.name for p in directory.iterdir()))}


def test_every_subcommand_is_in_the_scan():
    from jaxmap.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == set(_INVOCATIONS) | _NO_FILE_INPUTS


@pytest.mark.parametrize("command", sorted(_INVOCATIONS))
def test_bad_files_are_one_line_with_exit_2(command, small_store, subset_file, tmp_path, capsys):
    """Each file a subcommand reads, replaced in turn by a missing file, a directory, an empty
    file, random bytes and files of other formats: exit 2, one line naming the file."""
    good = {
        "store": small_store, "subset": subset_file, "texts": subset_file,
        "document": tmp_path / "doc.txt", "meta": tmp_path / "meta.csv",
        "scores": tmp_path / "scores.csv", "parents": tmp_path / "parents.csv", "demo": None,
        "tmp": tmp_path,
    }
    good["parents"].write_text("parent,child\nm0,m1\n")
    good["document"].write_text("word " * 400)
    good["meta"].write_text("model,family\n" + "".join(f"m{k},f{k % 2}\n" for k in range(6)))
    good["scores"].write_text("model,score\n" + "".join(f"m{k},{10 * k}\n" for k in range(6)))
    bad = _bad_files(tmp_path / "bad")
    slots = [part[1:-1] for part in _INVOCATIONS[command] if part[1:-1] in good and part != "{tmp}"]
    assert slots
    problems = []
    for slot in slots:
        for kind, path in bad.items():
            if slot == "demo" and kind in ("missing-file", "a-directory"):
                continue  # a new or existing directory is what the demo's --out should be
            argv = [command, *(part.format(**{**good, slot: path}) for part in _INVOCATIONS[command])]
            code, lines = _run(argv, capsys)
            if code != 2 or len(lines) != 1 or path.name not in lines[0] or "Traceback" in lines[0]:
                problems.append(f"{slot}={kind}: exit {code}, stderr {lines}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["resample", "{store}", "--n", "-3", "--out", "{tmp}/s.jsonl"], "argument --n: expected a positive integer"),
        (["kl", "{store}", "--out", "{tmp}/k.csv", "--clip-quantile", "1.5"], "a quantile in [0, 1)"),
        (["kl", "{store}", "--out", "{tmp}/k.csv", "--neighbors", "0"], "argument --neighbors"),
        (["map", "{store}", "--out", "{tmp}/m.png", "--perplexity", "-1"], "argument --perplexity"),
        (["map", "{store}", "--out", "{tmp}/m.xyz"], "cannot write .xyz images"),
        (["map", "{store}", "--out", "{tmp}/map"], "no suffix to say the image format"),
        (["predict", "{store}", "--scores", "{tmp}/s.csv", "--target", "x", "--seeds", "0"], "argument --seeds"),
        (["outliers", "{store}", "--model", "m1", "--top", "-1"], "argument --top"),
        (["outliers", "{store}", "--model", "m9"], "no model named 'm9'"),
        (["chunk", "{tmp}/d.txt", "--out", "{tmp}/c.jsonl", "--max-bytes", "2"], "argument --max-bytes"),
        (["chunk", "{tmp}/d.txt", "--out", "{tmp}/c.jsonl", "--min-bytes", "2000"], "leaves no chunk"),
        (["chunk", "{tmp}/d.txt", "{tmp}/d.txt", "--out", "{tmp}/c.jsonl"], "given twice"),
        (["demo", "--texts", "0"], "argument --texts: expected a positive integer"),
        (["questions", "--out", "{tmp}/q.jsonl", "--count", "0"], "argument --count: expected a positive integer"),
        (["questions", "--out", "{tmp}/q.jsonl", "--domains", "code"], "have no sentences"),
        (["accuracy", "{store}"], "no text has a question_id"),
        (["accuracy", "{store}", "--out", "{tmp}/no-such-directory/a.csv"], "its directory does not exist"),
        (["kl", "{store}", "--out", "{tmp}/no-such-directory/k.csv"], "its directory does not exist"),
        (["kl", "{store}", "--out", "{tmp}"], "is a directory"),
        (["kl", "{store}"], "required: --out"),
        (["kl", "{store}", "--out", "{tmp}/k.csv", "--seed", "3"], "unrecognized arguments: --seed 3"),
        (["no-such-command"], "invalid choice"),
        (["score", "m", "--texts", "{tmp}/t.jsonl", "--out", "{tmp}/s.h5", "--shard", "2/2"], "--shard"),
        (["score", "m", "--texts", "{tmp}/t.jsonl", "--out", "{tmp}/s.h5", "--mesh", "data=x"], "data=x"),
    ],
)
def test_bad_settings_are_one_line_with_exit_2(argv, expected, small_store, tmp_path, capsys):
    (tmp_path / "t.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "d.txt").write_text("word " * 400)
    code, error = _run([a.format(tmp=tmp_path, store=small_store) for a in argv], capsys)
    assert code == 2 and len(error) == 1, error
    assert expected in error[0] and "Traceback" not in error[0]
    command = "" if argv[0] == "no-such-command" else f" {argv[0]}"
    assert error[0].startswith(f"jaxmap{command}: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.txt", "t.jsonl"]


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
    for delay, signals in ((0.2, 1), (0.4, 1), (0.6, 1), (1.0, 1), (4.0, 2), (6.0, 3)):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        finished_first = process.poll() is not None
        for _ in range(signals):
            process.send_signal(signal.SIGINT)
            time.sleep(0.05)
        _, stderr = process.communicate(timeout=60)
        if finished_first or (process.returncode == 0 and delay > 2):
            continue
        # Within the first second the job is still importing JAX: it cannot have scored anything,
        # so a 0 here means the signal was swallowed (raised inside a gc callback and dropped).
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


def test_outputs_on_a_full_or_read_only_disk_are_one_line_and_keep_the_old_files(
    small_store, small_filesystem, capsys
):
    kl, chunks, document = small_filesystem / "kl.csv", small_filesystem / "c.jsonl", small_filesystem / "d.txt"
    document.write_text("word " * 400)
    assert main(["kl", str(small_store), "--out", str(kl)]) == 0
    assert main(["chunk", str(document), "--out", str(chunks)]) == 0
    before = [_digest(kl), _digest(chunks)]
    fill_filesystem(small_filesystem, leave_bytes=1024)
    for argv, output in (
        (["kl", small_store, "--out", kl, "--clip-quantile", "0.1"], kl),
        (["map", small_store, "--out", small_filesystem / "m.png", "--method", "pca"], small_filesystem / "m.png"),
        (["chunk", document, "--out", chunks, "--max-bytes", "500"], chunks),
    ):
        code, error = _run(argv, capsys)
        assert code == 2 and error == [f"jaxmap {argv[0]}: error: {output}: cannot write (the disk is full)"]
    assert [_digest(kl), _digest(chunks)] == before and not _temporaries(small_filesystem)
    (small_filesystem / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], check=True)
    code, error = _run(["kl", small_store, "--out", kl, "--clip-quantile", "0.1"], capsys)
    assert code == 2 and error == [f"jaxmap kl: error: {kl}: cannot write (the file system is read-only)"]
    assert _digest(kl) == before[0]


def test_an_interrupted_output_block_leaves_every_file_and_no_temporary(tmp_path):
    from jaxmap.outputs import atomic_outputs

    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("old a")
    os.chmod(first, 0o640)
    with pytest.raises(KeyboardInterrupt):
        with atomic_outputs([first, None, second]) as (a, nothing, b):
            assert nothing is None and a.parent == tmp_path and a.suffix == ".csv"
            a.write_text("new a")
            b.write_text("new b")
            raise KeyboardInterrupt
    assert first.read_text() == "old a" and not second.exists() and not _temporaries(tmp_path)
    with atomic_outputs([first, second]) as (a, b):
        a.write_text("new a")
        b.write_text("new b")
    assert (first.read_text(), second.read_text()) == ("new a", "new b")
    assert first.stat().st_mode & 0o777 == 0o640, "rewriting a file keeps its permissions"
    assert not _temporaries(tmp_path)


def test_text_set_errors_name_file_line_and_id_across_the_process_boundary(tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        '{"id": "fine", "text": "ok"}\n\n{"id": "culprit", "text": "half \\ud800 pair"}\n', encoding="utf-8"
    )
    result = subprocess.run(
        _jaxmap("score", "no-model", "--texts", texts, "--out", tmp_path / "s.h5"), capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"jaxmap score: error: {texts}:3: text 'culprit' contains a lone surrogate (U+D800) at position 5, "
        "which is not valid Unicode"
    ]
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.skipif(shutil.which("jaxmap") is None, reason="the jaxmap console script is not installed")
def test_the_console_script_refuses_an_output_over_its_input_in_one_line(small_store, tmp_path):
    store = tmp_path / "map.h5"
    store.write_bytes(small_store.read_bytes())
    before = _digest(store)
    result = subprocess.run(["jaxmap", "kl", str(store), "--out", str(store)], capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"jaxmap kl: error: {store}: is also an input of this command")
    assert _digest(store) == before and "Traceback" not in result.stderr
    result = subprocess.run(["jaxmap", "resample", str(store), "--n", "-3"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "jaxmap resample: error: argument --n: expected a positive integer, got '-3' (see jaxmap resample --help)"
    ]


def test_a_failing_demo_keeps_the_earlier_demo(tiny_models, tmp_path, capsys):
    from jaxmap.demo import run_demo
    from jaxmap.demo_texts import DEFAULT_DOMAINS, available_demo_domains

    if not set(DEFAULT_DOMAINS) <= set(available_demo_domains()):
        pytest.skip("the demo's text sources are not installed (scripts/install.sh)")
    out = tmp_path / "demo"
    models = [str(m) for m in tiny_models[:3]]
    run_demo(out, n_texts=6, models=models, progress=False, echo=lambda line: None)
    files = sorted(p for p in out.iterdir() if p.is_file())
    assert {"map.png", "map.html", "report.md", "texts.jsonl", "texts.manifest.json"} <= {p.name for p in files}
    before = [_digest(p) for p in files]
    # Another text count: the store refuses the new texts, and nothing the demo wrote changes.
    code, error = _run(["demo", "--out", out, "--texts", "7", "--models", *models, "--quiet"], capsys)
    assert code == 2 and len(error) == 1 and f"{out} holds an earlier demo" in error[0], error
    assert [_digest(p) for p in files] == before and not _temporaries(out)


def test_a_symbolic_link_output_stays_a_link_and_a_device_is_written_in_place(small_store, tmp_path, capsys):
    target, link = tmp_path / "runs" / "kl.csv", tmp_path / "latest.csv"
    target.parent.mkdir()
    link.symlink_to(target)
    assert main(["kl", str(small_store), "--out", str(link)]) == 0
    assert link.is_symlink() and target.read_text().startswith("model,m0,")
    capsys.readouterr()
    code, error = _run(["kl", small_store, "--out", "/dev/full"], capsys)
    assert code == 2 and error == ["jaxmap kl: error: /dev/full: cannot write (the disk is full)"]
    assert not _temporaries(tmp_path)


def test_a_reader_that_stops_reading_ends_the_command_quietly(small_store):
    process = subprocess.Popen(
        _jaxmap("outliers", small_store, "--model", "m1", "--top", "30"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # like `| head` that has seen enough, before the first line comes
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141 and stderr == ""
