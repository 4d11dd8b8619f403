"""Multi-host runs: two real processes joined with jax.distributed on 127.0.0.1 (gloo on CPU),
each with two virtual CPU devices, against a single-process run; a killed multi-host run
resumes like a single-host one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxmap
from jaxmap.store import open_store


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(models, text_file, outs, port, extra=()):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}
    processes = []
    for index, out in enumerate(outs):
        # Output goes to files: a process blocked on a full pipe would stall the other in a
        # collective.
        logs = [outs[0].parent / f"process{index}-{port}.{kind}" for kind in ("out", "err")]
        with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "jaxmap.cli", "score", *map(str, models), "--texts", str(text_file),
                    "--out", str(out), "--quiet", "--batch-tokens", "256", "--mesh", "data=2,model=2",
                    "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(index),
                    *extra,
                ],
                env=env, stdout=stdout, stderr=stderr,
            )
        process.logs = logs
        processes.append(process)
    return processes


def _finish(processes, timeout=240):
    results = []
    try:
        for process in processes:
            process.wait(timeout=timeout)
            stdout, stderr = (log.read_text() for log in process.logs)
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def test_two_processes_write_the_single_process_store(tiny_models, text_file, tmp_path):
    models = tiny_models[:2]
    reference = jaxmap.score([str(m) for m in models], text_file, out=tmp_path / "single.h5", progress=False)
    # Process 1 is handed a path it could not create: it must never open the store.
    never = tmp_path / "not-a-directory"
    never.write_text("")
    outs = [tmp_path / "multi.h5", never / "store.h5"]
    results = _finish(_launch(models, text_file, outs, _free_port()))
    for code, stdout, stderr in results:
        assert code == 0, stderr[-2000:]
    assert "2 scored" in results[0][1] and "scored" not in results[1][1], "process 0 alone reports"
    store = open_store(outs[0])
    assert store.models == reference.models
    assert all(meta["mesh"] == "data=2,model=2" for meta in store.model_meta)
    np.testing.assert_allclose(store.loglik, reference.loglik, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(store.ntokens, reference.ntokens)


def test_a_killed_multi_host_run_resumes(tiny_models, text_file, tmp_path):
    out = tmp_path / "multi.h5"
    models = tiny_models[:3]
    port = _free_port()
    processes = _launch(models, text_file, [out, out], port)
    deadline = time.time() + 240
    while time.time() < deadline and all(p.poll() is None for p in processes):
        if out.exists() and len(open_store(out).models) >= 1:
            break
        time.sleep(0.1)
    for process in processes:
        process.send_signal(signal.SIGKILL)
    _finish(processes)
    kept = open_store(out)
    if len(kept.models) == len(models):
        pytest.skip("the run finished before it could be killed")
    first_times = {m: meta["time"] for m, meta in zip(kept.models, kept.model_meta)}
    results = _finish(_launch(models, text_file, [out, out], _free_port()))
    assert all(code == 0 for code, _, _ in results), results[0][2][-2000:]
    final = open_store(out)
    assert sorted(final.models) == sorted(str(m) for m in models)
    for model, meta in zip(final.models, final.model_meta):
        if model in first_times:
            assert meta["time"] == first_times[model], f"{model} was scored again"
