"""A failure seen by one process of a multi-host run (issue 22, item 7): two real processes
joined with jax.distributed on 127.0.0.1 (gloo on CPU, one CPU device each, mesh data=2), where
process 1 alone fails, against single-process runs of the same models.

- Process 1's hub cache (each host has its own: ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``) holds a
  damaged copy of one model (weights of another size: it validates, then fails to load) and
  lacks another's weights (it fails validation): both models fail on both processes with one
  reason naming process 1, and the job goes on with the others.
- Process 1 is stopped by SIGTERM once rows are committed: both processes stop within seconds
  with the same line and status, and the store keeps the committed rows.
- Process 1 cannot read the text set (a relative path, another working directory): both stop
  with the same one-line error and exit 2; the rows of an earlier job stay as they were.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jaxmap
from jaxmap.store import open_store

from conftest import TEXTS, save_random_model, tiny_llama_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"
STOP_WITHIN = 60  # seconds for both processes to stop once one failed (a loaded 2-core machine)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(models, texts, out, workdirs, envs=(None, None), extra=()):
    """Start processes 0 and 1 of one run; output goes to files (a process blocked on a full
    pipe would stall the other in a collective)."""
    port = _free_port()
    processes = []
    for index, (workdir, env_extra) in enumerate(zip(workdirs, envs)):
        env = {
            **os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1",
            **(env_extra or {}),
        }
        logs = [Path(workdir) / f"process{index}.{kind}" for kind in ("out", "err")]
        with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "jaxmap.cli", "score", *map(str, models), "--texts", str(texts),
                    "--out", str(out), "--quiet", "--batch-tokens", "256", "--mesh", "data=2,model=1",
                    "--compile-cache", "none", "--coordinator", f"127.0.0.1:{port}",
                    "--num-processes", "2", "--process-id", str(index), *extra,
                ],
                cwd=workdir, env=env, stdout=stdout, stderr=stderr,
            )
        process.logs = logs
        processes.append(process)
    return processes


def _wait(processes, timeout):
    """Wait for both; returns [(exit status, stdout, stderr, seconds since the call)]."""
    started, results = time.monotonic(), []
    try:
        for process in processes:
            try:
                process.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"process {processes.index(process)} still runs {timeout} s on:\n"
                    + "\n".join(log.read_text()[-1500:] for p in processes for log in p.logs)
                )
            results.append(
                (process.returncode, *(log.read_text() for log in process.logs), time.monotonic() - started)
            )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def _stop_line(stderr: str) -> str:
    """The command's own last line (jaxmap score: ...); tracebacks or log lines may precede it."""
    lines = [line for line in stderr.splitlines() if line.startswith("jaxmap score: ")]
    assert lines, f"no 'jaxmap score:' line in:\n{stderr[-3000:]}"
    return lines[-1]


def _hub_cache(root: Path, models: dict[str, Path], weights_from: dict[str, Path | None] = {}) -> Path:
    """A hub cache in huggingface_hub's layout holding ``models`` (id -> HF directory) at COMMIT;
    ``weights_from[id]`` replaces that model's weights with another directory's, or leaves them
    out (None)."""
    for repo_id, directory in models.items():
        repo = root / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / COMMIT
        snapshot.mkdir(parents=True)
        for file in directory.iterdir():
            if file.name == "model.safetensors" and repo_id in weights_from:
                if weights_from[repo_id] is None:
                    continue
                file = weights_from[repo_id] / file.name
            shutil.copyfile(file, snapshot / file.name)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
    return root


@pytest.fixture(scope="module")
def four_models(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("mh-models")
    return [save_random_model(root / f"m{seed}", tiny_llama_config(), seed=seed) for seed in range(4)]


@pytest.fixture(scope="module")
def four_shapes(tmp_path_factory) -> list[Path]:
    """Four models of four depths: each compiles its own scorers, so each takes seconds."""
    root = tmp_path_factory.mktemp("mh-shapes")
    return [
        save_random_model(root / f"d{layers}", tiny_llama_config(num_hidden_layers=layers), seed=layers)
        for layers in (1, 2, 3, 4)
    ]


@pytest.fixture(scope="module")
def other_size_model(tmp_path_factory) -> Path:
    """The same tensor names, other shapes: weights that validate with their own config only."""
    root = tmp_path_factory.mktemp("mh-other")
    return save_random_model(root / "wide", tiny_llama_config(hidden_size=32, intermediate_size=48), seed=9)


@pytest.fixture(scope="module")
def many_texts(tmp_path_factory) -> Path:
    """Enough texts that each model scores for a few seconds, so that a signal lands mid-job."""
    path = tmp_path_factory.mktemp("mh-texts") / "texts.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(20 * len(TEXTS)):
            handle.write(json.dumps({"id": f"t{i}", "text": f"{i}: {TEXTS[i % len(TEXTS)]}"}) + "\n")
    return path


def _assert_rows_match(store, models_in_store, reference, reference_models):
    """Each row of ``store`` equals the single-process row of the same model."""
    for row, model in enumerate(models_in_store):
        expected = reference_models.index(model)
        np.testing.assert_allclose(store.loglik[row], reference.loglik[expected], atol=1e-4, rtol=0, err_msg=model)
        np.testing.assert_array_equal(store.ntokens[row], reference.ntokens[expected])


def test_a_model_failing_on_process_1_only_fails_everywhere_and_the_job_goes_on(
    four_models, other_size_model, text_file, tmp_path
):
    ids = [f"acme/tiny-{i}" for i in range(4)]
    models = dict(zip(ids, four_models))
    caches = [
        _hub_cache(tmp_path / "cache0", models),
        # Process 1's copy of tiny-1 holds another model's weights (it validates: headers match
        # their files, and fails to load); its copy of tiny-3 has no weights (fails validation).
        _hub_cache(tmp_path / "cache1", models, {ids[1]: other_size_model, ids[3]: None}),
    ]
    envs = [{"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"} for cache in caches]
    out = tmp_path / "multi.h5"
    workdirs = [tmp_path / "p0", tmp_path / "p1"]
    for workdir in workdirs:
        workdir.mkdir()
    results = _wait(_launch(ids, text_file, out, workdirs, envs), timeout=240)

    for index, (code, _, stderr, _) in enumerate(results):
        assert code == 1, f"process {index}: {stderr[-3000:]}"
        assert "Traceback" not in stderr, stderr[-3000:]
    # Both processes name each failed model on one line, the same line, naming process 1.
    for failed in (ids[1], ids[3]):
        lines = [
            [line for line in stderr.splitlines() if line.startswith(f"jaxmap: {failed}: ") and "process 1 of 2" in line]
            for _, _, stderr, _ in results
        ]
        assert lines[0] and lines[0][-1] == lines[1][-1], (failed, lines)
    summary = results[0][1]
    assert "2 scored" in summary and "2 failed" in summary, summary
    reasons = {line.split(": ", 1)[0].split()[-1]: line for line in summary.splitlines() if "FAILED" in line}
    assert set(reasons) == {ids[1], ids[3]} and all("process 1 of 2: " in r for r in reasons.values()), reasons
    # Process 0's run summary records the same reasons.
    recorded = json.loads(out.with_name(out.name + ".run.json").read_text())["jobs"][-1]["models"]
    failures = {m["reference"]: m["reason"] for m in recorded if m["status"] == "failed"}
    assert set(failures) == {ids[1], ids[3]} and all(r.startswith("process 1 of 2: ") for r in failures.values())

    # The models both processes could score equal a single-process run of them.
    reference_models = [str(four_models[0]), str(four_models[2])]
    reference = jaxmap.score(reference_models, text_file, out=tmp_path / "single.h5", progress=False, batch_tokens=256)
    store = open_store(out)
    assert store.models == [ids[0], ids[2]]
    _assert_rows_match(store, reference_models, reference, reference_models)


def test_sigterm_on_process_1_stops_both_with_one_line_and_keeps_committed_rows(four_shapes, many_texts, tmp_path):
    out = tmp_path / "multi.h5"
    workdirs = [tmp_path / "p0", tmp_path / "p1"]
    for workdir in workdirs:
        workdir.mkdir()
    processes = _launch(four_shapes, many_texts, out, workdirs)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and all(p.poll() is None for p in processes):
            if out.exists() and len(open_store(out).models) >= 1:
                break
            time.sleep(0.05)
        if any(p.poll() is not None for p in processes):
            _wait(processes, timeout=10)
            pytest.fail("a process ended before any row was committed")
        processes[1].send_signal(signal.SIGTERM)
    except BaseException:
        for process in processes:
            process.kill()
        raise
    results = _wait(processes, timeout=STOP_WITHIN)
    seconds = max(result[3] for result in results)
    print(f"both processes stopped {seconds:.1f} s after SIGTERM reached process 1")

    lines = [_stop_line(stderr) for _, _, stderr, _ in results]
    assert lines[0] == lines[1], lines
    assert "SIGTERM" in lines[0] and "process 1 of 2" in lines[0] and "committed rows are kept" in lines[0]
    assert [code for code, *_ in results] == [128 + signal.SIGTERM] * 2, [r[2][-2000:] for r in results]

    kept = open_store(out)
    models = [str(m) for m in four_shapes]
    assert 1 <= len(kept.models) < len(models), kept.models
    assert kept.models == models[: len(kept.models)], "rows are committed in the list's order"
    reference = jaxmap.score(kept.models, many_texts, out=tmp_path / "single.h5", progress=False, batch_tokens=256)
    _assert_rows_match(kept, kept.models, reference, kept.models)
    recorded = json.loads(out.with_name(out.name + ".run.json").read_text())["jobs"][-1]
    assert recorded["interrupted"] is True


def test_an_error_on_process_1_only_stops_both_with_one_line(four_models, text_file, tmp_path):
    out = tmp_path / "store.h5"
    first = jaxmap.score([str(four_models[0])], text_file, out=out, progress=False, batch_tokens=256)
    # --texts is relative: process 0's working directory has the file, process 1's does not.
    workdirs = [tmp_path / "p0", tmp_path / "p1"]
    for workdir in workdirs:
        workdir.mkdir()
    shutil.copyfile(text_file, workdirs[0] / "texts.jsonl")
    results = _wait(_launch(four_models[:2], "texts.jsonl", out, workdirs), timeout=STOP_WITHIN)
    print(f"both processes stopped {max(r[3] for r in results):.1f} s after they started")

    lines = [_stop_line(stderr) for _, _, stderr, _ in results]
    assert lines[0] == lines[1], lines
    assert lines[0].startswith("jaxmap score: error: process 1 of 2: ") and "texts.jsonl" in lines[0], lines[0]
    assert [code for code, *_ in results] == [2, 2], [r[2][-2000:] for r in results]
    assert all("Traceback" not in stderr for _, _, stderr, _ in results)
    kept = open_store(out)
    assert kept.models == first.models
    np.testing.assert_array_equal(kept.loglik, first.loglik)


BUSY_SCRIPT = """
import sys, time
from jaxmap import distributed
from jaxmap.errors import StoreError

distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))


@distributed.together
def job():
    if distributed.process_index() == 1:
        time.sleep(1)
        raise StoreError("/data/map.h5: cannot write (no space left on the device)")
    time.sleep(120)  # busy, as while loading a large model: never reaches a meeting point


try:
    job()
except distributed.ProcessFailedError as error:
    print(f"jaxmap: {error}", file=sys.stderr)
    distributed.exit_now(2)
"""


def test_a_process_busy_elsewhere_is_ended_by_its_watchdog(tmp_path):
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
    processes = []
    for index in range(2):
        logs = [tmp_path / f"process{index}.{kind}" for kind in ("out", "err")]
        with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-c", BUSY_SCRIPT, f"127.0.0.1:{port}", str(index)],
                env=env, stdout=stdout, stderr=stderr,
            )
        process.logs = logs
        processes.append(process)
    results = _wait(processes, timeout=STOP_WITHIN)
    # Process 0 sleeps for 120 s in its main thread; its watchdog ends it long before.
    assert [code for code, *_ in results] == [2, 2], [r[2][-2000:] for r in results]
    lines = [[line for line in stderr.splitlines() if line.startswith("jaxmap: ")][-1] for _, _, stderr, _ in results]
    assert lines[0] == lines[1] == (
        "jaxmap: process 1 of 2: /data/map.h5: cannot write (no space left on the device)"
    ), lines
    print(f"both processes stopped {max(r[3] for r in results):.1f} s after they started")
