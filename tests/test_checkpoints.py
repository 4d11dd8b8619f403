"""Checkpoints: validation of real damaged files, canonical references (one model, one row), and
hub access against real HTTP servers on 127.0.0.1: one that never answers, one that answers 404,
and one that serves tiny models as the hub's HTTP API does (tests/fake_hub.py), for lazy weight downloads, retries,
the prefetcher's budget and delete_after, end to end."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jaxmap.checkpoints import WeightPrefetcher, resolve, validate
from jaxmap.errors import CheckpointError, HubError, JaxmapError, UnsupportedModelError

from fake_hub import WEIGHTS, FakeHub, git_blob_id, serve


# -- validation of real damaged files ------------------------------------------------------------


@pytest.fixture
def model_copy(tiny_models, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_models[0], copy)
    return copy


def _read_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _write_safetensors(path: Path, header: dict, data: bytes) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)


def _edit_header(edit):
    def damage(directory: Path) -> None:
        header, data = _read_safetensors(directory / WEIGHTS)
        tensors = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
        edit(header, tensors)
        _write_safetensors(directory / WEIGHTS, header, data)

    return damage


def _same_offsets_as_first(header, tensors):
    twin = next(k for k in tensors[1:] if header[k]["shape"] == header[tensors[0]]["shape"])
    header[twin]["data_offsets"] = header[tensors[0]]["data_offsets"]


def _shift_last(header, tensors):
    begin, end = header[tensors[-1]]["data_offsets"]
    header[tensors[-1]]["data_offsets"] = [begin + 4, end + 4]


def _index_naming(extra: dict):
    def damage(directory: Path) -> None:
        header, _ = _read_safetensors(directory / WEIGHTS)
        weight_map = {name: WEIGHTS for name in header if name != "__metadata__"}
        (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {**weight_map, **extra}}))

    return damage


DAMAGE = {
    "truncated": (lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:-100]), WEIGHTS, "truncated or damaged"),
    "garbage": (lambda d: (d / WEIGHTS).write_bytes(b"garbage" * 100), WEIGHTS, "not a safetensors file"),
    "header-not-json": (lambda d: (d / WEIGHTS).write_bytes((16).to_bytes(8, "little") + b"\xff" * 64), WEIGHTS, "header is not JSON"),
    "header-past-end": (lambda d: (d / WEIGHTS).write_bytes((10**9).to_bytes(8, "little") + b"{}"), WEIGHTS, "past the end"),
    "seven-bytes": (lambda d: (d / WEIGHTS).write_bytes(b"\x01" * 7), WEIGHTS, "too short"),
    "shape-vs-offsets": (_edit_header(lambda h, t: h[t[0]]["shape"].__setitem__(0, h[t[0]]["shape"][0] + 1)), WEIGHTS, "its shape needs"),
    "unknown-dtype": (_edit_header(lambda h, t: h[t[0]].__setitem__("dtype", "Q4_K")), WEIGHTS, "unknown dtype 'Q4_K'"),
    "float8": (_edit_header(lambda h, t: h[t[0]].__setitem__("dtype", "F8_E4M3")), WEIGHTS, "dtype F8_E4M3, which jaxmap cannot read"),
    "malformed-shape": (_edit_header(lambda h, t: h[t[0]].__setitem__("shape", "64x64")), WEIGHTS, "malformed shape"),
    "overlapping-tensors": (_edit_header(_same_offsets_as_first), WEIGHTS, "overlaps the tensor before it"),
    "gap-between-tensors": (_edit_header(_shift_last), WEIGHTS, "leaves a gap"),
    "config-list": (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json", "holds a JSON list, not an object"),
    "config-garbage": (lambda d: (d / "config.json").write_bytes(b"{\x00\xff not json"), "config.json", "is not valid JSON"),
    "no-tokenizer": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json", "no tokenizer files"),
    "tokenizer-garbage": (lambda d: (d / "tokenizer.json").write_text("{"), "tokenizer.json", "is not valid JSON"),
    "tokenizer-list": (lambda d: (d / "tokenizer.json").write_text("[]"), "tokenizer.json", "holds a JSON list"),
    "tokenizer-config-garbage": (lambda d: (d / "tokenizer_config.json").write_text("{'a': 1}"), "tokenizer_config.json", "is not valid JSON"),
    "index-missing-tensor": (_index_naming({"model.layers.9.mlp.up_proj.weight": WEIGHTS}), "model.safetensors.index.json", "model.layers.9.mlp.up_proj.weight"),
    "index-missing-shard": (_index_naming({"lm_head.weight": "model-00002-of-00002.safetensors"}), "model-00002-of-00002.safetensors", "shard(s) missing"),
    "index-outside": (_index_naming({"lm_head.weight": "../elsewhere.safetensors"}), "model.safetensors.index.json", "not a shard index"),
    "index-list": (lambda d: (d / "model.safetensors.index.json").write_text("[]"), "model.safetensors.index.json", "holds a JSON list"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_every_damaged_file_is_one_line_naming_model_and_file(model_copy, case):
    checkpoint = resolve(str(model_copy))
    validate(checkpoint)  # sound before the damage
    damage, file_name, message = DAMAGE[case]
    damage(model_copy)
    with pytest.raises(CheckpointError, match=re.escape(message)) as caught:
        validate(checkpoint)
    text = str(caught.value)
    assert text.startswith(f"{model_copy}: ") and file_name in text and "\n" not in text


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architectures": ["FooForCausalLM"]}, "unsupported architecture 'FooForCausalLM'"),
        ({"rope_scaling": {"rope_type": "wild", "factor": 2.0}}, "rope_scaling"),
    ],
    ids=["architecture", "config-field"],
)
def test_a_config_the_port_cannot_translate_is_refused_at_validation(model_copy, change, message):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UnsupportedModelError, match=message) as caught:
        validate(resolve(str(model_copy)))
    assert str(caught.value).startswith(f"{model_copy}: ")


def test_sharded_weights_and_slow_tokenizer_files_validate(model_copy):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(model_copy / WEIGHTS))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, members in shards.items():
        save_file({n: tensors[n] for n in members}, str(model_copy / shard))
    (model_copy / WEIGHTS).unlink()
    weight_map = {n: shard for shard, members in shards.items() for n in members}
    (model_copy / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    # The slow-tokenizer files AutoTokenizer would use instead of tokenizer.json.
    model = json.loads((model_copy / "tokenizer.json").read_text())["model"]
    (model_copy / "vocab.json").write_text(json.dumps(model["vocab"]))
    merges = ["#version: 0.2"] + [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (model_copy / "merges.txt").write_text("\n".join(merges) + "\n")
    (model_copy / "tokenizer.json").unlink()
    checkpoint = resolve(str(model_copy))
    validate(checkpoint)
    assert [f.name for f in checkpoint.weight_files()] == sorted(shards)
    (model_copy / "vocab.json").write_text("not json")
    with pytest.raises(CheckpointError, match="vocab.json is not valid JSON"):
        validate(checkpoint)


def test_a_pickle_only_checkpoint_is_refused_by_name(model_copy):
    (model_copy / WEIGHTS).rename(model_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pickle-only checkpoint \(pytorch_model.bin\)"):
        resolve(str(model_copy))


# -- canonical references -----------------------------------------------------------------------


def test_one_directory_spelled_five_ways_is_one_canonical_model(model_copy, tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(model_copy)
    spellings = ["model", "./model", "model/", str(model_copy), "link", str(tmp_path / "link") + "/"]
    checkpoints = [resolve(s) for s in spellings]
    assert {c.canonical for c in checkpoints} == {str(model_copy.resolve())}
    assert [c.reference for c in checkpoints] == spellings
    assert len({c.revision for c in checkpoints}) == 1
    assert resolve(str(tiny_models[1])).canonical != checkpoints[0].canonical


def test_a_gguf_file_and_a_packaged_name_have_canonical_keys(tmp_path, monkeypatch):
    from test_gguf import write_tiny_gguf

    from jaxmap.checkpoints import packaged

    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "alias.gguf").symlink_to(gguf_file)
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    keys = {resolve(s, cache_dir=cache, progress=False).canonical for s in ("tiny.gguf", "./tiny.gguf", "alias.gguf", str(gguf_file))}
    assert keys == {str(gguf_file.resolve())}
    # A packaged model is its name, wherever its GGUF file lies.
    monkeypatch.setattr(packaged, "find_packaged_gguf", lambda name, cache_dir=None: gguf_file)
    checkpoint = resolve("smollm2-135m-instruct", cache_dir=cache, progress=False)
    assert checkpoint.canonical == "smollm2-135m-instruct" and checkpoint.source == "gguf"
    assert checkpoint.release_weights() == 0 and checkpoint.fetch_weights() == []
    assert all(f.exists() for f in checkpoint.weight_files())


# -- a hub cache laid out as huggingface_hub lays it out ----------------------------------------------


def _lay_out_cache(root: Path, repo_id: str, model: Path, commit: str, files: list[str] | None = None) -> Path:
    """Write ``model``'s files as huggingface_hub caches a snapshot: blobs, relative symlinks, refs/main."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(model.iterdir()):
        if files is not None and file.name not in files:
            continue
        data = file.read_bytes()
        blob = repo / "blobs" / (hashlib.sha256(data).hexdigest() if file.suffix == ".safetensors" else git_blob_id(data))
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    root = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return root


def test_an_offline_hub_cache_resolves_every_spelling_to_one_commit(tiny_models, offline_cache):
    commit = "0123456789abcdef0123456789abcdef01234567"
    _lay_out_cache(offline_cache, "acme/tiny", tiny_models[0], commit)
    spellings = ["acme/tiny", f"acme/tiny@{commit}", "acme/tiny@main", "ACME/Tiny"]
    checkpoints = [resolve(s) for s in spellings]
    assert {c.canonical for c in checkpoints} == {f"acme/tiny@{commit}"}
    assert [c.reference for c in checkpoints] == spellings
    validate(checkpoints[0])
    assert not checkpoints[0].weights_pending and checkpoints[0].fetch_weights() == []
    for reference, message in [
        ("acme/absent", "acme/absent: not in the local hub cache"),
        ("acme/tiny@v2", "acme/tiny@v2: revision 'v2' not in the local hub cache"),
        ("acme/tiny@" + "f" * 40, f"commit {'f' * 40} not in the local hub cache"),
    ]:
        with pytest.raises(HubError, match=message) as caught:
            resolve(reference)
        assert "HF_HUB_OFFLINE" in str(caught.value)


def test_an_offline_cache_without_weights_fails_validation_naming_the_offline_setting(tiny_models, offline_cache):
    commit = "a" * 40
    _lay_out_cache(offline_cache, "acme/light", tiny_models[0], commit, files=["config.json", "tokenizer.json", "tokenizer_config.json"])
    checkpoint = resolve("acme/light")
    assert checkpoint.weights_pending and checkpoint.download_bytes() == 0
    expected = "acme/light: model.safetensors not in the local hub cache .*HF_HUB_OFFLINE forbids downloading"
    with pytest.raises(HubError, match=expected):
        validate(checkpoint)
    with pytest.raises(HubError, match=expected):
        checkpoint.fetch_weights()


# -- a model hub on 127.0.0.1 ------------------------------------------------------------------------


@pytest.fixture
def fake_hub(tiny_models, tmp_path, monkeypatch):
    """A FakeHub serving acme/m0…m2 (tiny_models 0…2), set as huggingface_hub's endpoint, with an
    empty hub cache, a 2 s timeout and one retry."""
    from huggingface_hub import constants

    hub = FakeHub()
    hub.commits = [hub.add(f"acme/m{i}", tiny_models[i]) for i in range(3)]
    server, url = serve(hub)
    hub.url, hub.cache = url, tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("JAXMAP_HUB_TIMEOUT", "2")
    monkeypatch.setenv("JAXMAP_HUB_RETRIES", "1")
    yield hub
    server.shutdown()
    server.server_close()


def _weight_blobs(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("models--*/blobs/*") if p.stat().st_size > 100_000)


def test_resolving_a_hub_model_fetches_config_and_tokenizer_only(fake_hub, tiny_models):
    from huggingface_hub import try_to_load_from_cache

    checkpoint = resolve("acme/m0")
    commit = fake_hub.commits[0]
    assert (checkpoint.reference, checkpoint.canonical, checkpoint.revision) == ("acme/m0", f"acme/m0@{commit}", commit)
    fetched = {r[2] for r in fake_hub.requests() if r[2] != "api"}
    assert fetched == {"config.json", "tokenizer.json", "tokenizer_config.json"}
    validate(checkpoint)
    weights = (tiny_models[0] / WEIGHTS).read_bytes()
    assert checkpoint.weights_pending and checkpoint.download_bytes() == len(weights)
    added = checkpoint.fetch_weights()
    assert [p.name for p in added] == [WEIGHTS] and added[0].read_bytes() == weights
    assert not checkpoint.weights_pending and checkpoint.fetch_weights() == []
    # huggingface_hub itself finds what jaxmap downloaded: the same cache layout.
    for name in (WEIGHTS, "config.json"):
        assert Path(try_to_load_from_cache("acme/m0", name, cache_dir=str(fake_hub.cache))) == checkpoint.directory / name
    # Every spelling of the commit is one model; the weights are not downloaded again.
    for spelling in (f"acme/m0@{commit}", "acme/m0@v1", "ACME/M0"):
        assert resolve(spelling).canonical == checkpoint.canonical
    assert len(fake_hub.requests(WEIGHTS)) == 1


def test_a_sharded_hub_model_fetches_its_index_first_and_its_shards_later(fake_hub, tiny_models, tmp_path):
    from safetensors.numpy import load_file, save_file

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_models[0], sharded)
    tensors = load_file(str(sharded / WEIGHTS))
    (sharded / WEIGHTS).unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, members in shards.items():
        save_file({n: tensors[n] for n in members}, str(sharded / shard))
    weight_map = {n: shard for shard, members in shards.items() for n in members}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    fake_hub.add("acme/sharded", sharded)
    checkpoint = resolve("acme/sharded")
    assert {r[2] for r in fake_hub.requests(repo="acme/sharded")} == {"api", "config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"}
    validate(checkpoint)
    assert checkpoint.download_bytes() == sum((sharded / shard).stat().st_size for shard in shards)
    assert sorted(p.name for p in checkpoint.fetch_weights()) == sorted(shards)
    validate(checkpoint)
    # An index naming a shard the hub repository does not have is refused before any download.
    (sharded / "model-00002-of-00002.safetensors").unlink()
    fake_hub.add("acme/broken", sharded)
    with pytest.raises(CheckpointError, match="^acme/broken: shard\\(s\\) missing from the hub repository: model-00002-of-00002.safetensors$"):
        validate(resolve("acme/broken"))


def test_hub_errors_are_one_line_naming_model_and_problem(fake_hub):
    host = fake_hub.url.removeprefix("http://")
    fake_hub.faults[("acme/m1", "config.json")] = ["gated"]
    fake_hub.faults[("acme/m2", "api")] = ["html"]
    cases = [
        ("acme/absent", "acme/absent: not found on the hub (404), or private or gated"),
        ("acme/m0@nope", "acme/m0@nope: revision 'nope' not found on the hub"),
        ("acme/m1", "acme/m1: gated on the hub"),
        ("acme/m2", f"acme/m2: {host} did not answer as a model hub does"),
    ]
    for reference, message in cases:
        with pytest.raises(HubError) as caught:
            resolve(reference)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__, "no third-party traceback"
    # Not transient: each was asked once.
    assert len(fake_hub.requests("api", "acme/absent")) == 1


def test_transient_failures_are_retried_and_downloads_resume(fake_hub, tiny_models):
    fake_hub.faults[("acme/m0", "api")] = ["503"]
    fake_hub.faults[("acme/m0", WEIGHTS)] = ["cut"]
    checkpoint = resolve("acme/m0")
    assert len(fake_hub.requests("api", "acme/m0")) == 2
    checkpoint.fetch_weights()
    assert (checkpoint.directory / WEIGHTS).read_bytes() == (tiny_models[0] / WEIGHTS).read_bytes()
    first, second = fake_hub.requests(WEIGHTS, "acme/m0")
    assert first[3] is None and second[3] == f"bytes={len((tiny_models[0] / WEIGHTS).read_bytes()) // 2}-"


def test_a_damaged_or_stalled_download_fails_after_its_tries_and_leaves_nothing(fake_hub, monkeypatch):
    host = fake_hub.url.removeprefix("http://")
    checkpoints = [resolve("acme/m0"), resolve("acme/m1")]
    fake_hub.faults[("acme/m0", WEIGHTS)] = ["damaged"] * 2
    with pytest.raises(HubError, match=rf"^acme/m0: download from {host} arrived damaged: model.safetensors's sha256 differs from the hub's \(2 tries\)$"):
        checkpoints[0].fetch_weights()
    monkeypatch.setenv("JAXMAP_HUB_TIMEOUT", "0.5")
    fake_hub.faults[("acme/m1", WEIGHTS)] = ["stall"] * 2
    started = time.monotonic()
    with pytest.raises(HubError, match=rf"^acme/m1: cannot reach {host}: timed out after 2 tries \(0.5 s each\)$"):
        checkpoints[1].fetch_weights()
    assert time.monotonic() - started < 5.0, "two 0.5 s timeouts and a 1 s backoff, not two 5 s stalls"
    assert all(c.weights_pending for c in checkpoints)
    assert not [p for p in fake_hub.cache.rglob("*") if p.name.endswith(".incomplete") or p.stat().st_size > 100_000]


def test_a_full_disk_during_a_download_names_the_file_and_leaves_no_partial_file(fake_hub, small_filesystem, monkeypatch):
    from huggingface_hub import constants

    from conftest import fill_filesystem

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(small_filesystem / "hub-cache"))
    checkpoint = resolve("acme/m0")
    fill_filesystem(small_filesystem, leave_bytes=checkpoint.download_bytes() // 4)
    with pytest.raises(CheckpointError, match=r"^acme/m0: cannot write model.safetensors to the hub cache .*No space left on device\)$"):
        checkpoint.fetch_weights()
    assert not list((small_filesystem / "hub-cache").rglob("*.incomplete")) and checkpoint.weights_pending
    assert len(fake_hub.requests(WEIGHTS)) == 1, "a full disk is not worth another try"


def test_hub_settings_come_from_the_environment(fake_hub, monkeypatch):
    monkeypatch.setenv("JAXMAP_HUB_TIMEOUT", "soon")
    with pytest.raises(JaxmapError, match="JAXMAP_HUB_TIMEOUT='soon': expected a positive number of seconds"):
        resolve("acme/m0")
    monkeypatch.setenv("JAXMAP_HUB_TIMEOUT", "2")
    monkeypatch.setenv("JAXMAP_HUB_RETRIES", "-1")
    with pytest.raises(JaxmapError, match="JAXMAP_HUB_RETRIES='-1'"):
        resolve("acme/m0")
    monkeypatch.setenv("JAXMAP_HUB_RETRIES", "0")
    fake_hub.faults[("acme/m0", "api")] = ["503"]
    with pytest.raises(HubError, match=r"answered HTTP 503 \(1 try\)"):
        resolve("acme/m0")


# -- the prefetcher ----------------------------------------------------------------------------------


def test_prefetcher_keeps_within_its_budget_and_deletes_what_it_downloaded(fake_hub, tiny_models):
    hub_models = [resolve(f"acme/m{i}") for i in range(3)]
    local = resolve(str(tiny_models[3]))
    size = hub_models[0].download_bytes()
    with WeightPrefetcher([hub_models[0], local, hub_models[1], hub_models[2]], ahead=2, disk_budget=int(1.5 * size), delete_after=True) as prefetcher:
        assert prefetcher.held_bytes == size, "a second model would exceed the budget"
        assert prefetcher.wait(local) is local  # a local directory downloads nothing
        prefetcher.wait(hub_models[0])
        assert _weight_blobs(fake_hub.cache) and not fake_hub.requests(WEIGHTS, "acme/m1")
        released = time.monotonic()
        assert prefetcher.release(hub_models[0]) == size
        assert not (hub_models[0].directory / WEIGHTS).exists() and (hub_models[0].directory / "config.json").exists()
        for checkpoint in hub_models[1:]:
            prefetcher.wait(checkpoint)
            assert len(_weight_blobs(fake_hub.cache)) == 1, "never two models' weights at once"
            prefetcher.release(checkpoint)
        assert prefetcher.release(local) == 0 and (tiny_models[3] / WEIGHTS).exists()
        assert fake_hub.requests(WEIGHTS, "acme/m1")[0][0] > released
        assert prefetcher.failures == {} and prefetcher.held_bytes == 0
    assert not _weight_blobs(fake_hub.cache)


def test_prefetcher_downloads_a_bounded_number_of_models_ahead(fake_hub):
    hub_models = [resolve(f"acme/m{i}") for i in range(3)]
    size = hub_models[0].download_bytes()
    with WeightPrefetcher(hub_models, ahead=1) as prefetcher:
        assert prefetcher.disk_budget == 2 * size, "default: ahead + 1 times the largest model"
        assert prefetcher.held_bytes == 2 * size
        prefetcher.wait(hub_models[1])
        assert not fake_hub.requests(WEIGHTS, "acme/m2")
        # m0 downloads beside m1; closing cancels a download still running, so let it finish.
        prefetcher.wait(hub_models[0])
        released = time.monotonic()
        assert prefetcher.release(hub_models[0]) == 0, "without delete_after nothing is deleted"
        prefetcher.wait(hub_models[2])
        assert fake_hub.requests(WEIGHTS, "acme/m2")[0][0] > released
    assert len(_weight_blobs(fake_hub.cache)) == 3


def test_a_failed_download_is_that_models_failure_only(fake_hub):
    hub_models = [resolve(f"acme/m{i}") for i in range(3)]
    fake_hub.faults[("acme/m1", WEIGHTS)] = ["gated"]
    with WeightPrefetcher(hub_models, ahead=2, delete_after=True) as prefetcher:
        prefetcher.wait(hub_models[0])
        with pytest.raises(HubError, match="^acme/m1: gated on the hub"):
            prefetcher.wait(hub_models[1])
        prefetcher.wait(hub_models[2])
        assert list(prefetcher.failures) == ["acme/m1"] and "gated" in prefetcher.failures["acme/m1"]
        for checkpoint in hub_models:
            prefetcher.release(checkpoint)
    assert not _weight_blobs(fake_hub.cache)


def test_a_model_over_the_budget_fails_without_downloading(fake_hub):
    checkpoint = resolve("acme/m0")
    with WeightPrefetcher([checkpoint], disk_budget=checkpoint.download_bytes() - 1) as prefetcher:
        with pytest.raises(CheckpointError, match=r"^acme/m0: its weights \(0.00 GB\) exceed the disk budget"):
            prefetcher.wait(checkpoint)
    assert not fake_hub.requests(WEIGHTS)


def test_weights_already_in_the_cache_are_never_deleted(fake_hub, tiny_models):
    snapshot = _lay_out_cache(fake_hub.cache, "acme/m0", tiny_models[0], fake_hub.commits[0])
    checkpoint = resolve("acme/m0")
    assert checkpoint.directory == snapshot and not checkpoint.weights_pending
    with WeightPrefetcher([checkpoint], delete_after=True) as prefetcher:
        prefetcher.wait(checkpoint)
        assert prefetcher.release(checkpoint) == 0
    assert (snapshot / WEIGHTS).read_bytes() == (tiny_models[0] / WEIGHTS).read_bytes()
    assert not fake_hub.requests(WEIGHTS)


def test_closing_the_prefetcher_cancels_downloads_in_progress(fake_hub):
    hub_models = [resolve(f"acme/m{i}") for i in range(2)]
    fake_hub.faults[("acme/m0", WEIGHTS)] = ["slow"]
    prefetcher = WeightPrefetcher(hub_models, ahead=0, delete_after=True)
    time.sleep(0.3)
    started = time.monotonic()
    prefetcher.close()
    assert time.monotonic() - started < 2.0, "the download stops at its next chunk (0.1 s apart)"
    for checkpoint in hub_models:
        with pytest.raises(CheckpointError, match=f"^{checkpoint.reference}: download cancelled"):
            prefetcher.wait(checkpoint, timeout=1)
    assert not [p for p in fake_hub.cache.rglob("*") if p.name.endswith(".incomplete")]
    assert not fake_hub.requests(WEIGHTS, "acme/m1")


# -- through the command line, with HF_ENDPOINT set ---------------------------------------------------


@pytest.fixture
def silent_host():
    """Accepts connections on 127.0.0.1, reads each request's first line and never answers; all
    closes after 60 s at most. Yields the URL and the request lines read."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held, requests, stop = [], [], threading.Event()

    def accept():
        deadline = time.time() + 60
        while not stop.is_set() and time.time() < deadline:
            try:
                connection = server.accept()[0]
            except OSError:
                continue
            held.append(connection)
            connection.settimeout(5)
            try:
                requests.append(connection.recv(4096).split(b"\r\n", 1)[0].decode())
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", requests
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def _jaxmap(arguments: list[str], endpoint: str, tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, float]:
    settings = {
        "HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(tmp_path / "hub-cache"), "HF_HUB_OFFLINE": "0",
        "JAXMAP_HUB_TIMEOUT": "1", "JAXMAP_HUB_RETRIES": "1", **env,
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "jaxmap.cli", *arguments], env={**os.environ, **settings},
        capture_output=True, text=True, timeout=120,
    )
    return result, time.monotonic() - started


def test_a_host_that_never_answers_fails_within_timeout_times_tries(silent_host, text_file, tmp_path):
    endpoint, requests = silent_host
    result, seconds = _jaxmap(["score", "acme/tiny", "--texts", str(text_file), "--out", str(tmp_path / "s.h5"), "--quiet"], endpoint, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert f"acme/tiny: cannot reach {endpoint.removeprefix('http://')}: timed out after 2 tries (1 s each)" in output
    # huggingface_hub's own telemetry asks the host once per process too (3 s timeout).
    assert [r for r in requests if "/api/models/" in r] == ["GET /api/models/acme/tiny?blobs=true HTTP/1.1"] * 2
    assert seconds < 30, "two tries of one second each, a 1 s backoff, the telemetry's 3 s, start-up"


def test_a_missing_hub_model_is_one_line(text_file, tmp_path):
    server, endpoint = serve(FakeHub())
    try:
        result, _ = _jaxmap(["score", "acme/tiny", "--texts", str(text_file), "--out", str(tmp_path / "s.h5"), "--quiet"], endpoint, tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert "acme/tiny: not found on the hub (404)" in output


def test_a_hub_job_downloads_lazily_and_deletes_after_scoring(tiny_models, text_file, tmp_path):
    import jaxmap

    hub = FakeHub()
    commits = [hub.add(f"acme/m{i}", tiny_models[i]) for i in range(2)]
    server, endpoint = serve(hub)
    try:
        result, _ = _jaxmap(
            ["score", "acme/m0", "acme/m1", "--texts", str(text_file), "--out", str(tmp_path / "hub.h5"), "--quiet", "--delete-after"],
            endpoint, tmp_path,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert [len(hub.requests(WEIGHTS, f"acme/m{i}")) for i in range(2)] == [1, 1]
    assert not _weight_blobs(tmp_path / "hub-cache") and list((tmp_path / "hub-cache").rglob("config.json"))
    stored = jaxmap.open_store(tmp_path / "hub.h5")
    assert stored.model_keys == [f"acme/m{i}@{commits[i]}" for i in range(2)]
    local = jaxmap.score([str(m) for m in tiny_models[:2]], text_file, out=tmp_path / "local.h5", progress=False)
    np.testing.assert_array_equal(stored.loglik, local.loglik)
