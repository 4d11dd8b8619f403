"""Paths as people type them: relative to the working directory, with ``~``, through symbolic
links and with spaces, for `jaxmap train`, `jaxmap score` (run directories, quoted globs, step
directories) and `jaxmap trajectory`.

Each command runs as its own process in a temporary working directory, as from a shell: orbax
refuses relative paths (its metadata of a relative checkpoint has no tree), which only a real
working directory other than the checkpoint's exposes.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import jaxmap

from conftest import TEXTS, build_tokenizer

STEPS = ["step_00000000", "step_00000002", "step_00000004"]


def _jaxmap(work: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``jaxmap ARGUMENTS`` in ``work``, with ``~`` meaning ``work`` (HOME), as a shell runs it."""
    environment = {**os.environ, "HOME": str(work)}
    return subprocess.run(
        [sys.executable, "-m", "jaxmap.cli", *arguments], cwd=work, env=environment,
        capture_output=True, text=True, timeout=300,
    )


def _succeeds(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "a bug in jaxmap" not in result.stderr, result.stderr
    return result.stdout


def test_relative_tilde_linked_and_spaced_paths_work_end_to_end(tmp_path):
    work = tmp_path / "work dir"
    (work / "maps").mkdir(parents=True)
    build_tokenizer(work / "tok", adds_bos=True)
    with open(work / "t.jsonl", "w", encoding="utf-8") as handle:
        for i, text in enumerate(TEXTS):
            handle.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
    (work / "linked runs").symlink_to("my runs")
    (work / "linked maps").symlink_to("maps")

    # A relative run directory with a space in its name; `~` (HOME) left for jaxmap to expand.
    _succeeds(_jaxmap(
        work, "train", "--architecture", "llama", "--tokenizer", "~/tok", "--texts", "~/t.jsonl",
        "--out", "my runs/run1", "--hidden-size", "16", "--layers", "1", "--heads", "2",
        "--steps", "4", "--save-every", "2", "--batch-size", "2", "--seq-len", "16",
        "--warmup-steps", "1", "--quiet",
    ))
    run = work / "my runs" / "run1"
    assert sorted(p.name for p in run.glob("step_*")) == STEPS
    assert not (work / "~").exists()

    # The run directory, relative, into a relative store.
    _succeeds(_jaxmap(work, "score", "my runs/run1", "--texts", "t.jsonl", "--out", "maps/all.h5", "--quiet"))
    whole = jaxmap.open_store(work / "maps" / "all.h5")
    assert whole.models == [f"my runs/run1/{step}" for step in STEPS]
    assert [meta["key"] for meta in whole.model_meta] == [str((run / step).resolve()) for step in STEPS]

    # A quoted glob through a symbolic link, and one step directory spelled with `~`, into a
    # store named through a linked directory: it lands in the directory the link points to.
    _succeeds(_jaxmap(
        work, "score", "linked runs/run1/step_0000000[02]", "~/my runs/run1/step_00000004",
        "--texts", "t.jsonl", "--out", "linked maps/parts.h5", "--quiet",
    ))
    assert (work / "maps" / "parts.h5").is_file() and (work / "linked maps").is_symlink()
    parts = jaxmap.open_store(work / "maps" / "parts.h5")
    assert parts.models == ["linked runs/run1/step_00000000", "linked runs/run1/step_00000002",
                            str(run / "step_00000004")]
    assert [meta["key"] for meta in parts.model_meta] == [meta["key"] for meta in whole.model_meta]
    assert np.array_equal(parts.loglik, whole.loglik), "one checkpoint scores the same however it is named"

    # The trajectory of the relative store, weight space included (read from the checkpoints).
    table = "~/maps/trajectory table.csv"
    _succeeds(_jaxmap(
        work, "trajectory", "maps/all.h5", "--path-glob", "my runs/run1/step_*", "--min-points", "2",
        "--out", table,
    ))
    with open(work / "maps" / "trajectory table.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model"] for row in rows] == whole.models
    assert rows[0]["exponent_loglik"] and rows[0]["exponent_weights"], rows[0]
