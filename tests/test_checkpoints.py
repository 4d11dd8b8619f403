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
