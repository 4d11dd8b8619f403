"""The soak benchmark (benchmarks/soak.py) in small: one `jaxmap score` job over 40 models on the
fake hub (tests/fake_hub.py), 6 of them broken (one of each kind: truncated weights, a download
cut halfway, gated, 404, a stalled server, NaN weights), with --disk-budget and --delete-after,
SIGKILLed right after a random row and resumed. No row may be lost or duplicated, every broken
model must be named in the summary with a reason that says what is wrong with it, and the
resumed job must keep the rows committed before the kill."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import soak  # noqa: E402

pytest.importorskip("torch")


def test_forty_models_killed_once_lose_and_duplicate_nothing(tmp_path):
    result = soak.run(
        models=40, kills=1, seed=1, work=tmp_path, bases=3, hub_timeout=1.0, hub_retries=1,
        kill_jitter=0.0, say=lambda line: print(line),
    )
    assert soak.verdict(result) == [], soak.verdict(result)
    rows = result["rows"]
    assert rows["store"] == rows["expected"] == 34
    assert not rows["lost"] and not rows["duplicated"] and not rows["unexpected"] and not rows["verify_problems"]
    broken = result["failures"]["broken"]
    assert sorted(b["kind"] for b in broken) == sorted(soak.BROKEN)
    assert all(b["named"] and b["reason_matches"] and "\n" not in b["reason"] for b in broken), broken
    first, last = result["segments"]
    assert first["killed"] and 0 < first["rows_committed"] < rows["expected"]
    assert not last["killed"] and last["returncode"] == 1  # some models failed, named
    # The resumed job scored only what the killed one had not committed (a row committed just
    # before the kill may not have been reported by the killed job).
    assert result["last_job"]["skipped"] >= first["rows_committed"]
    assert result["last_job"]["skipped"] + result["last_job"]["scored"] == rows["expected"]
    assert result["phases"]["compile"]["count"] == rows["expected"]
    assert {"resolve", "download", "load", "score", "commit"} <= {n for n, s in result["phases"].items() if s["count"]}
