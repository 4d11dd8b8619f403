"""One store under several names and several writers: a store path that is a symbolic link
(or starts with ~), two jobs on one store at once, and merge of a part that a job is writing.
Process boundaries are real: the other writers and lock holders are separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from jaxmap.cli import main
from jaxmap.jobs import BY_ANOTHER_JOB, score_job
from jaxmap.store import StoreError, StoreWriter, drop, journal_directory, merge, open_store
from jaxmap.texts import TextSet

SETTINGS = {"dtype": "float32", "bos_policy": "full"}


def _row(n, value):
    return np.full(n, value, np.float64), np.arange(n, dtype=np.int32), np.zeros(n, bool)


def _writer(path):
    return StoreWriter(path, TextSet.from_texts(["a", "bé"]), SETTINGS)


def _linked(tmp_path, name="s.h5"):
    """``links/NAME`` -> ``real/NAME`` (a relative link, as `ln -s` makes them)."""
    (tmp_path / "real").mkdir(exist_ok=True)
    (tmp_path / "links").mkdir(exist_ok=True)
    link = tmp_path / "links" / name
    link.symlink_to(os.path.join("..", "real", name))
    return link, tmp_path / "real" / name


def _companions(directory):
    return sorted(p.name for p in directory.iterdir() if not p.is_symlink())


def test_writing_through_a_symbolic_link_writes_where_it_points(tmp_path):
    link, real = _linked(tmp_path)
    _writer(real).append("m0", *_row(2, -1.0), {})
    writer = _writer(link)
    writer.append("m1", *_row(2, -2.0), {})
    writer.compact()  # a rewrite, which once replaced the link by a regular file
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "real", "s.h5")
    assert open_store(real).models == ["m0", "m1"]
    assert open_store(link).models == ["m0", "m1"]
    assert _companions(tmp_path / "links") == [], "journal and lock sit beside the real file"

    writer.append("m2", *_row(2, -3.0), {})  # in the journal, beside the real file
    assert len(list(journal_directory(real).glob("*.row"))) == 1
    assert open_store(link).models == ["m0", "m1", "m2"]

    assert drop(link, ["m1"]) == ["m1"]
    assert link.is_symlink() and open_store(real).models == ["m0", "m2"]

    out_link, out_real = _linked(tmp_path, "merged.h5")  # dangling until the merge writes it
    part_link = tmp_path / "links" / "part.h5"
    part_link.symlink_to(real)
    assert merge([part_link], out_link).models == ["m0", "m2"]
    assert out_link.is_symlink() and open_store(out_real).models == ["m0", "m2"]
    with pytest.raises(StoreError, match="also one of the stores"):
        merge([out_real], out_link)
    assert _companions(tmp_path / "links") == []


_LOCK_HOLDER = """
import fcntl, sys
with open(sys.argv[1], "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    print("holding", flush=True)
    sys.stdin.readline()
"""


def _hold(lock_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(lock_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline() == "holding\n"
    return holder


def test_the_link_and_the_real_path_share_one_lock(tmp_path):
    link, real = _linked(tmp_path)
    writer = _writer(link)
    holder = _hold(real.with_name("s.h5.lock"))  # another writer, by the real path
    committed = threading.Event()
    appending = threading.Thread(target=lambda: (writer.append("m1", *_row(2, -1.0), {}), committed.set()))
    appending.start()
    try:
        assert not committed.wait(1.0), "the commit through the link did not wait for the lock"
    finally:
        holder.communicate("\n")
    appending.join(10)
    assert committed.is_set() and open_store(real).models == ["m1"]


def test_a_tilde_in_a_store_path_is_the_home_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    writer = _writer("~/s.h5")
    writer.append("m0", *_row(2, -1.0), {})
    writer.append("m1", *_row(2, -2.0), {})
    assert (tmp_path / "s.h5").is_file() and not (tmp_path / "~").exists()
    assert open_store("~/s.h5").models == ["m0", "m1"]
    assert main(["drop", "~/s.h5", "m0"]) == 0
    assert main(["merge", "~/s.h5", "--out", "~/merged.h5"]) == 0
    assert open_store(tmp_path / "merged.h5").models == ["m1"]
    assert not (tmp_path / "~").exists()


def test_jaxmap_score_through_a_symbolic_link(tiny_models, text_file, tmp_path):
    link, real = _linked(tmp_path)
    score_job([str(tiny_models[0])], text_file, real, progress=False, batch_tokens=128)
    result = subprocess.run(
        [sys.executable, "-m", "jaxmap.cli", "score", str(tiny_models[1]), "--texts", str(text_file),
         "--out", str(link), "--quiet", "--batch-tokens", "128"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert open_store(real).models == [str(tiny_models[0]), str(tiny_models[1])]
    runs = json.loads(real.with_name("s.h5.run.json").read_text())["jobs"]
    assert [[m["reference"] for m in job["models"]] for job in runs] == [[str(tiny_models[0])], [str(tiny_models[1])]]
    assert _companions(tmp_path / "links") == []


_OTHER_WRITER = """
import sys
import numpy as np
from jaxmap.store import StoreWriter, open_store

store = open_store(sys.argv[1])
writer = StoreWriter(sys.argv[1], store.text_set, store.settings)
n = len(store.text_ids)
for key in sys.argv[2:]:
    writer.append(key, np.full(n, -7.0), np.ones(n, np.int32), np.zeros(n, bool), {"key": key})
"""


def test_a_job_skips_what_another_writer_commits_meanwhile_and_goes_on(tiny_models, text_file, tmp_path, monkeypatch):
    from jaxmap import jobs

    out = tmp_path / "c.h5"
    keys = [str(m.resolve()) for m in tiny_models]
    calls, merge_refusals = [], []
    original = jobs.score_tokens

    def score_tokens(model, *args, **kwargs):
        calls.append(model.checkpoint.reference)
        if len(calls) == 1:
            # While this job scores tiny-0, another process commits tiny-0 and tiny-1.
            subprocess.run([sys.executable, "-c", _OTHER_WRITER, str(out), keys[0], keys[1]], check=True)
            with pytest.raises(StoreError) as refused:
                merge([out], tmp_path / "merged.h5")
            merge_refusals.append(str(refused.value))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(jobs, "score_tokens", score_tokens)
    references = [str(m) for m in tiny_models[:3]]
    summary = score_job(references, text_file, out, progress=False, batch_tokens=128)

    assert calls == [references[0], references[2]], "tiny-1 was committed before its turn: not scored"
    assert [(o.status, o.reason) for o in summary.outcomes] == [
        ("skipped", BY_ANOTHER_JOB), ("skipped", BY_ANOTHER_JOB), ("scored", ""),
    ]
    assert not summary.failures
    assert f"  skipped {references[1]}: {BY_ANOTHER_JOB}" in summary.lines()
    store = open_store(out)
    assert store.models == [keys[0], keys[1], references[2]]
    assert (store.loglik[:2] == -7.0).all() and (store.loglik[2] != -7.0).all()
    assert "a scoring job is still writing it" in merge_refusals[0] and str(out) in merge_refusals[0]
    assert merge([out], tmp_path / "merged.h5").models == store.models, "the job let go of its lock"


def test_two_jobs_on_one_store_both_finish_and_both_are_recorded(tiny_models, text_file, tmp_path):
    out = tmp_path / "c.h5"
    lists = [[tiny_models[0], tiny_models[1], tiny_models[2]], [tiny_models[2], tiny_models[1], tiny_models[3]]]
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxmap.cli", "score", *map(str, models), "--texts", str(text_file),
             "--out", str(out), "--quiet", "--batch-tokens", "128"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for models in lists
    ]
    results = [job.communicate(timeout=600) + (job.returncode,) for job in jobs]
    for stdout, stderr, code in results:
        assert code == 0, stderr
        assert "FAILED" not in stdout and "already has a row" not in stderr
    store = open_store(out)
    assert sorted(store.models) == sorted(str(m) for m in tiny_models)
    runs = json.loads((tmp_path / "c.h5.run.json").read_text())["jobs"]
    assert sorted([m["reference"] for m in job["models"]] for job in runs) == sorted(
        [str(m) for m in models] for models in lists
    )
    scored_by = [m["reference"] for job in runs for m in job["models"] if m["status"] == "scored"]
    assert sorted(scored_by) == sorted(str(m) for m in tiny_models), "each model scored by exactly one job"
    assert {m["status"] for job in runs for m in job["models"]} <= {"scored", "skipped"}


_JOB_LOCK_HOLDER = """
import sys
from jaxmap.store import StoreWriter, open_store

store = open_store(sys.argv[1])
with StoreWriter(sys.argv[1], store.text_set, store.settings).job():
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_merge_refuses_a_part_that_a_job_is_writing(tmp_path, capsys):
    part = tmp_path / "part.h5"
    writer = _writer(part)
    for i in range(3):
        writer.append(f"m{i}", *_row(2, -float(i)), {})
    job = subprocess.Popen(
        [sys.executable, "-c", _JOB_LOCK_HOLDER, str(part)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert job.stdout.readline() == "holding\n"
        with pytest.raises(StoreError, match=f"{part}: a scoring job is still writing it"):
            merge([part], tmp_path / "all.h5")
        assert main(["merge", str(part), "--out", str(tmp_path / "all.h5")]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and str(part) in error[0] and "still writing" in error[0]
        assert not (tmp_path / "all.h5").exists()
        writer.append("m3", *_row(2, -3.0), {})  # a commit does not wait for the job's lock
    finally:
        job.communicate("\n")
    assert merge([part], tmp_path / "all.h5").models == ["m0", "m1", "m2", "m3"]
