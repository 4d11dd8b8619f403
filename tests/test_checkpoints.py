"""Checkpoints: cheap validation of damaged files, canonical references (one model, one row),
and hub access that fails within its timeout with one line naming the model and the host."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import socket

import numpy as np
import pytest

from jaxmap.checkpoints import resolve, validate
from jaxmap.errors import CheckpointError


@pytest.fixture
def model_copy(tiny_models, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_models[0], copy)
    return copy


def _weights(directory):
    return directory / "model.safetensors"


def test_a_sound_checkpoint_validates(model_copy):
    validate(resolve(str(model_copy)))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: _weights(d).write_bytes(_weights(d).read_bytes()[:-100]), "truncated or damaged"),
        (lambda d: _weights(d).write_bytes(b"garbage" * 100), "not a safetensors file"),
        (lambda d: _weights(d).write_bytes((10**9).to_bytes(8, "little") + b"{}"), "past the end"),
        (lambda d: _weights(d).write_bytes(b"\x01"), "too short"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), "holds a JSON list, not an object"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer files"),
        (lambda d: (d / "tokenizer.json").write_text("{"), "tokenizer.json is not valid JSON"),
    ],
    ids=["truncated", "garbage", "header-past-end", "tiny", "config-list", "config-garbage", "no-tokenizer", "tokenizer-garbage"],
)
def test_damaged_checkpoints_are_named(model_copy, damage, message):
    damage(model_copy)
    with pytest.raises(CheckpointError, match=message) as caught:
        validate(resolve(str(model_copy)))
    assert str(model_copy) in str(caught.value)


def test_a_shard_index_naming_a_missing_tensor_is_refused(model_copy):
    from safetensors import safe_open

    with safe_open(str(_weights(model_copy)), "numpy") as handle:
        names = list(handle.keys())
    weight_map = {name: "model.safetensors" for name in names}
    weight_map["model.layers.9.mlp.up_proj.weight"] = "model.safetensors"
    (model_copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="model.layers.9.mlp.up_proj.weight"):
        validate(resolve(str(model_copy)))
    (model_copy / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(CheckpointError, match="not a shard index"):
        resolve(str(model_copy))


def test_one_directory_spelled_four_ways_is_one_canonical_model(model_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(model_copy)
    spellings = ["model", "./model", "model/", str(model_copy), str(link)]
    assert len({resolve(s).canonical for s in spellings}) == 1
    assert [resolve(s).reference for s in spellings] == spellings


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server interface
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def silent_host():
    """Accepts connections on 127.0.0.1 and never answers; closes them after 60 s at most."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def accept():
        deadline = time.time() + 60
        while not stop.is_set() and time.time() < deadline:
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture
def not_found_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _score_hub_model(endpoint, text_file, tmp_path):
    env = {
        "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(tmp_path / "hub-cache"), "HF_HUB_OFFLINE": "0",
        "JAXMAP_HUB_TIMEOUT": "1", "JAXMAP_HUB_RETRIES": "1",
    }
    import os

    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "jaxmap.cli", "score", "acme/tiny", "--texts", str(text_file), "--out", str(tmp_path / "s.h5"), "--quiet"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    return result, time.time() - started


def test_a_host_that_never_answers_fails_within_the_timeout(silent_host, text_file, tmp_path):
    result, seconds = _score_hub_model(silent_host, text_file, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert seconds < 40, "two tries of one second each, plus start-up"
    line = next(line for line in result.stdout.splitlines() if "FAILED" in line)
    assert "acme/tiny" in line and f"cannot reach {silent_host.removeprefix('http://')}" in line and "2 tries" in line


def test_a_missing_hub_model_is_one_line(not_found_host, text_file, tmp_path):
    result, _ = _score_hub_model(not_found_host, text_file, tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "acme/tiny" in result.stderr and "not found on the hub" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _fake_hub(tiny_models, root, calls):
    """A stand-in for the hub download: lays files out as huggingface_hub's cache does."""
    import fnmatch
    import os

    def fetch(repo_id, revision, patterns, timeout):
        number = int(repo_id[-1])
        repo = root / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / f"{number:040d}"
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "blobs").mkdir(exist_ok=True)
        present = sorted(p.parent.parent.parent.name for p in root.glob("*/snapshots/*/*.safetensors"))
        calls.append((repo_id, tuple(patterns), present))
        for file in tiny_models[number].iterdir():
            if any(fnmatch.fnmatch(file.name, p) for p in patterns):
                blob = repo / "blobs" / f"{file.name}-{number}"
                shutil.copyfile(file, blob)
                link = snapshot / file.name
                link.unlink(missing_ok=True)
                link.symlink_to(os.path.relpath(blob, snapshot))
        return snapshot

    return fetch


@pytest.mark.parametrize("budget", [None, "one model"])
def test_hub_weights_download_when_loading_and_are_deleted_after_scoring(tiny_models, text_file, tmp_path, monkeypatch, budget):
    from jaxmap.checkpoints import hub
    from jaxmap.jobs import score_job
    from jaxmap.store import open_store

    calls = []
    monkeypatch.setattr(hub, "_fetch", _fake_hub(tiny_models, tmp_path / "cache", calls))
    weights = _weights(tiny_models[0]).stat().st_size
    monkeypatch.setattr(hub, "weight_bytes", lambda *args: weights)
    references = ["acme/m0", "acme/m1", "acme/m2"]
    summary = score_job(
        references, text_file, tmp_path / "hub.h5", progress=False, delete_after=True,
        disk_budget=int(1.5 * weights) if budget else None,
    )
    assert not summary.failures
    metadata, downloads = calls[:3], calls[3:]
    assert [c[1] for c in metadata] == [tuple(hub.METADATA_FILES)] * 3, "validation fetched weights"
    assert sorted(c[0] for c in downloads) == references and all(c[1] == tuple(hub.WEIGHT_FILES) for c in downloads)
    if budget:
        # Within the budget of one model's weights, no download starts while another model's weights are on disk.
        assert all(c[2] == [] for c in downloads)
    assert not list((tmp_path / "cache").rglob("*.safetensors*")), "scored models' weights were deleted"
    local = score_job([str(m) for m in tiny_models[:3]], text_file, tmp_path / "local.h5", progress=False)
    assert not local.failures
    np.testing.assert_array_equal(open_store(tmp_path / "hub.h5").loglik, open_store(tmp_path / "local.h5").loglik)
    assert open_store(tmp_path / "hub.h5").model_keys == [f"acme/m{i}@{i:040d}" for i in range(3)]
