"""docs/scale-out.md's SLURM recipes, run as written on a real one-node SLURM cluster.

The session fixture starts munged, slurmctld and slurmd on localhost (tests/slurm_cluster.py;
Debian's slurm-wlm 22.05, installed beforehand by scripts/install_slurm.sh) and the tests run the
code blocks the docs mark with ``<!-- test_slurm: NAME -->``, so that the docs cannot drift from
what is tested:

- ``score.sbatch`` + ``submit-array``: the ``#SBATCH --array`` job over the tiny models, then the
  ``jaxmap merge`` queued behind it, must give the single-process store;
- ``srun-distributed``: ``srun --ntasks=2 ... --distributed`` must form a two-process
  jax.distributed run from the launcher's environment and write the single-process store.

Without root, SLURM or munge, or when the daemons do not come up within 60 s, every test here is
skipped with the reason (the daemons' log tails included).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxmap.store import open_store

from slurm_cluster import ClusterUnavailable, start_cluster

DOC = Path(__file__).resolve().parent.parent / "docs" / "scale-out.md"
BLOCK = re.compile(r"<!-- test_slurm: (\S+) -->\s*\n```[^\n]*\n(.*?)\n```", re.DOTALL)
# The docs' array has 16 tasks; two do here (CI has 2 cores). The script reads the count from
# SLURM_ARRAY_TASK_COUNT, so this line is the only change made to it.
DOC_ARRAY, TEST_ARRAY = "#SBATCH --array=0-15", "#SBATCH --array=0-1"
JOB_TIMEOUT = 150  # seconds; each recipe takes about 20-40 s on 2 cores


def doc_blocks() -> dict[str, str]:
    blocks = dict(BLOCK.findall(DOC.read_text(encoding="utf-8")))
    missing = {"score.sbatch", "submit-array", "srun-distributed"} - set(blocks)
    assert not missing, f"{DOC}: no block marked <!-- test_slurm: NAME --> for {sorted(missing)}"
    return blocks


@pytest.fixture(scope="session")
def slurm():
    try:
        cluster = start_cluster(timeout=60)
    except ClusterUnavailable as reason:
        pytest.skip(f"no SLURM cluster: {reason}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def job_environment() -> dict[str, str]:
    """The tests' own Python first on PATH (jobs inherit it: sbatch and srun export the whole
    environment), one CPU device per process."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "jaxmap").exists():
        pytest.fail(f"{bin_dir} has no jaxmap script: install jaxmap into this environment (pip install -e .)")
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "JAX_PLATFORMS": "cpu"}
    return env


@pytest.fixture(scope="session")
def reference(tiny_models, text_file, tmp_path_factory):
    """The single-process store over the same model list, texts and settings."""
    import jaxmap

    directory = tmp_path_factory.mktemp("single")
    models = _inputs(directory, tiny_models, text_file)
    return open_store(jaxmap.score(str(models), str(text_file), out=directory / "map.h5", progress=False).path)


def _inputs(directory: Path, tiny_models, text_file) -> Path:
    """models.txt and texts.jsonl, as the docs' commands name them, in ``directory``."""
    models = directory / "models.txt"
    models.write_text("".join(f"{model}\n" for model in tiny_models))
    shutil.copy(text_file, directory / "texts.jsonl")
    return models


def _run_block(cluster, block: str, cwd: Path, env: dict, timeout: float = JOB_TIMEOUT):
    """Run ``block`` with bash in ``cwd``; (status, stdout, stderr). Past ``timeout`` its process
    group is stopped (srun cancels its step on SIGTERM) and the test fails with what it printed."""
    clean = {key: value for key, value in os.environ.items() if key != "JAX_NUM_CPU_DEVICES"}
    logs = [cwd / f"block.{kind}" for kind in ("out", "err")]
    with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env={**clean, **cluster.env, **env},
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True,
        )
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        queue = cluster.run(["squeue", "--steps"], cwd=cwd).stdout
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        printed = "\n".join(log.read_text(errors="replace")[-3000:] for log in logs)
        pytest.fail(f"{block!r} did not finish within {timeout:.0f} s; steps: {queue}\n{printed}\n{cluster.log_tails()}")
    return (process.returncode, *(log.read_text(errors="replace") for log in logs))


def _job_outputs(directory: Path) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}"
                     for path in sorted(directory.glob("slurm-*.out")))


def _assert_same_store(store, reference, rtol=0.0):
    """Same rows and texts, the same scored tokens, and log-likelihoods equal: exactly, or
    within ``rtol`` (relative; 1e-6 nats absolute for texts that score nothing)."""
    assert sorted(store.models) == sorted(reference.models)
    assert list(store.text_ids) == list(reference.text_ids)
    order = [store.models.index(model) for model in reference.models]
    np.testing.assert_array_equal(store.ntokens[order], reference.ntokens)
    if rtol:
        np.testing.assert_allclose(store.loglik[order], reference.loglik, rtol=rtol, atol=1e-6)
    else:
        np.testing.assert_array_equal(store.loglik[order], reference.loglik)


def test_the_docs_array_job_and_merge_give_the_single_process_store(
    slurm, job_environment, reference, tiny_models, text_file, tmp_path
):
    blocks = doc_blocks()
    script = blocks["score.sbatch"]
    assert DOC_ARRAY in script.splitlines(), f"score.sbatch no longer has the line {DOC_ARRAY!r}"
    _inputs(tmp_path, tiny_models, text_file)
    (tmp_path / "score.sbatch").write_text(script.replace(DOC_ARRAY, TEST_ARRAY) + "\n")

    started = time.monotonic()
    status, _, stderr = _run_block(slurm, blocks["submit-array"], tmp_path, job_environment, timeout=60)
    assert status == 0, stderr
    try:
        slurm.wait_idle(JOB_TIMEOUT)
    except TimeoutError as error:
        pytest.fail(f"{error}\n{_job_outputs(tmp_path)}\n{slurm.log_tails()}")
    print(f"array job and merge: {time.monotonic() - started:.0f} s")

    outputs = _job_outputs(tmp_path)
    assert (tmp_path / "map.h5").exists(), f"the merge job wrote no map.h5\n{outputs}"
    parts = sorted((tmp_path / "parts").glob("map-*.h5"))
    assert [p.name for p in parts] == ["map-0.h5", "map-1.h5"], outputs
    # Each task scored a shard of its own: between them, every model once.
    shards = [set(open_store(part).models) for part in parts]
    assert all(shards) and not shards[0] & shards[1], (shards, outputs)
    assert shards[0] | shards[1] == {str(model) for model in tiny_models}, outputs
    # The same computation on the same machine, model by model: equal to the last bit.
    _assert_same_store(open_store(tmp_path / "map.h5"), reference)


def test_the_docs_srun_distributed_run_gives_the_single_process_store(
    slurm, job_environment, reference, tiny_models, text_file, tmp_path
):
    command = doc_blocks()["srun-distributed"]
    assert re.search(r"\bsrun\b.*--ntasks=2\b.*--distributed\b", command, re.DOTALL), command
    _inputs(tmp_path, tiny_models, text_file)

    started = time.monotonic()
    status, stdout, stderr = _run_block(slurm, command, tmp_path, job_environment)
    print(f"srun --ntasks=2 --distributed: {time.monotonic() - started:.0f} s")
    assert status == 0, f"{stdout[-2000:]}\n{stderr[-3000:]}"
    # Process 0 alone reports (and writes); the other prints nothing.
    assert stdout.count("4 scored") == 1, stdout

    store = open_store(tmp_path / "map.h5")
    # Each batch is split over two devices here, so float32 sums round differently: about
    # 2e-7 relative (1e-5 nats on a 1,700-nat text), float32's own precision.
    _assert_same_store(store, reference, rtol=1e-6)
    # Each process has one CPU device (JAX_NUM_CPU_DEVICES is unset), so a two-device data axis
    # means both tasks joined the run and scored their halves of every batch.
    assert {meta["mesh"] for meta in store.model_meta} == {"data=2,model=1"}, store.model_meta[0]
