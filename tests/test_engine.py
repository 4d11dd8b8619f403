"""The scoring engine: compilation reuse, batching, dtype, errors for people, model
references (lists, hub cache, pickle-only), and torch staying out of jaxmap's imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxmap
from jaxmap.batching import bucket_length, plan_batches
from jaxmap.checkpoints import CheckpointError, expand_references
from jaxmap.cli import main
from jaxmap.errors import ModelsFailedError

from conftest import TEXTS, reference_loglik, save_random_model, tiny_llama_config


def test_same_shaped_models_share_compilations(text_file, tmp_path):
    from jaxmap.engine import compilation_count

    # A model shape no other test uses, so this process has compiled none of its batch shapes.
    models = [
        save_random_model(tmp_path / f"m{seed}", tiny_llama_config(intermediate_size=80), seed=seed)
        for seed in range(3)
    ]
    before = compilation_count()
    store = jaxmap.score([str(m) for m in models], text_file, out=tmp_path / "s.h5", progress=False)
    first, second, third = (meta for meta in store.model_meta)
    assert first["compilations"] >= 1
    assert first["compilations"] == first["batch_shapes"] == compilation_count() - before
    assert second["compilations"] == 0 and third["compilations"] == 0
    assert not np.allclose(store.loglik[0], store.loglik[1]), "different weights, different rows"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="counts Linux memory maps")
def test_compiled_scorers_are_bounded_and_evicted_ones_release_their_memory_maps(
    tiny_models, monkeypatch
):
    import jaxmap.engine as engine

    def memory_maps() -> int:
        return len(Path("/proc/self/maps").read_text().splitlines())

    model = engine.load_model(str(tiny_models[0]))
    monkeypatch.setattr(engine, "_COMPILED", type(engine._COMPILED)())
    monkeypatch.setattr(engine, "MAX_COMPILED", 2)
    # Row counts no other test uses, so each call is a fresh compilation.
    shapes = iter((rows, length) for rows in (13, 17) for length in range(16, 16 * 10, 16))

    def compile_next():
        return engine.compiled_scorer(model.params, model.config, *next(shapes), model.mesh)

    before = engine.compilation_count()
    first, _ = compile_next()
    for _ in range(2):
        compile_next()
    assert engine.compilation_count() - before == 3, "evicted compilations still count"
    assert len(engine._COMPILED) == 2 and first not in engine._COMPILED.values()
    bounded = memory_maps()
    for _ in range(6):
        compile_next()
    bounded = memory_maps() - bounded
    monkeypatch.setattr(engine, "MAX_COMPILED", 100)
    unbounded = memory_maps()
    for _ in range(6):
        compile_next()
    unbounded = memory_maps() - unbounded
    assert len(engine._COMPILED) == 8
    # Each executable holds tens of memory maps on CPU; evicted ones give theirs back.
    assert unbounded > 6 * 10 and bounded < unbounded / 3, (bounded, unbounded)


@pytest.mark.parametrize("dtype,precision", [("float32", "highest"), ("bfloat16", None)])
def test_float32_scorers_ask_for_full_precision_products(tiny_models, dtype, precision):
    """Accelerators round float32 matmul inputs by default (TF32, bfloat16 passes); the float32
    scorer's every product must ask for full precision, the 16-bit one for nothing extra."""
    import jaxmap.engine as engine

    model = engine.load_model(str(tiny_models[0]), dtype=dtype)
    scorer, _ = engine.compiled_scorer(model.params, model.config, 3, 48, model.mesh)
    dots = [line for line in scorer.as_text().splitlines() if " dot(" in line]
    assert dots
    for line in dots:
        if precision:
            assert f"operand_precision={{{precision},{precision}}}" in line, line
        else:
            assert "operand_precision" not in line, line


def test_batch_plan_covers_every_text_once_with_bounded_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 700, size=500)
    plan = plan_batches(lengths, batch_tokens=2048)
    covered = np.concatenate([b.indices for b in plan.batches])
    assert sorted(covered.tolist()) == sorted(np.flatnonzero(lengths > 0).tolist())
    for batch in plan.batches:
        assert len(batch.indices) <= batch.rows
        assert all(lengths[i] <= batch.length < 1.34 * lengths[i] + 16 for i in batch.indices)
    assert plan.padding_fraction < 0.2
    # Four bucket lengths per octave above 64, and at most two row counts per bucket length.
    octaves = np.log2(lengths.max() / 64)
    bucket_lengths = {b.length for b in plan.batches}
    assert len(bucket_lengths) <= 4 + 4 * np.ceil(octaves)
    assert len(plan.shapes) <= 2 * len(bucket_lengths)
    # A handful of texts does not pay for a full token budget of empty rows.
    few = plan_batches(np.array([100, 120, 300, 310, 50]), batch_tokens=8192)
    assert few.padding_fraction < 0.35
    assert bucket_length(1) == 16 and bucket_length(65) == 80 and bucket_length(1000) == 1024


def test_bfloat16_is_close_to_float32(tiny_models, text_file, tmp_path):
    full = jaxmap.score([str(tiny_models[0])], text_file, out=tmp_path / "f32.h5", progress=False)
    half = jaxmap.score([str(tiny_models[0])], text_file, out=tmp_path / "bf16.h5", dtype="bfloat16", progress=False)
    assert half.model_meta[0]["dtype"] == "bfloat16"
    difference = np.abs(half.loglik[0] - full.loglik[0]) / np.maximum(full.ntokens[0], 1)
    assert difference.max() < 0.05, "bf16 should stay within 0.05 nats per token"
    assert difference.max() > 0, "bf16 should actually change the arithmetic"


def _edit_config(source: Path, destination: Path, **changes) -> Path:
    shutil.copytree(source, destination)
    config = json.loads((destination / "config.json").read_text())
    config.update(changes)
    (destination / "config.json").write_text(json.dumps(config))
    return destination


def test_unsupported_config_field_is_refused_by_name(tiny_models, text_file, tmp_path):
    model = _edit_config(tiny_models[0], tmp_path / "m", attention_chunk_size=8)
    with pytest.raises(ModelsFailedError, match="attention_chunk_size"):
        jaxmap.score([str(model)], text_file, out=tmp_path / "s.h5", progress=False)
    assert jaxmap.open_store(tmp_path / "s.h5").models == []


def test_unknown_rope_type_is_refused(tiny_models, text_file, tmp_path):
    # Gemma 4's proportional rope: known to transformers, not implemented by jaxmap.
    rope = {"rope_type": "proportional", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    model = _edit_config(tiny_models[0], tmp_path / "m", rope_parameters=rope)
    with pytest.raises(ModelsFailedError, match="proportional"):
        jaxmap.score([str(model)], text_file, out=tmp_path / "s.h5", progress=False)


def test_unknown_architecture_is_one_clear_cli_line(tiny_models, text_file, tmp_path, capsys):
    model = _edit_config(tiny_models[0], tmp_path / "m", architectures=["FalconForCausalLM"])
    store = tmp_path / "s.h5"
    code = main(["score", str(model), "--texts", str(text_file), "--out", str(store), "--quiet"])
    captured = capsys.readouterr()
    error = captured.err.strip().splitlines()
    assert code == 1, "the job ran to its end with a failed model"
    assert len(error) == 1 and "FalconForCausalLM" in error[0] and str(model) in error[0]
    assert f"FAILED  {model}: " in captured.out
    assert jaxmap.open_store(store).models == [], "nothing is scored when a reference is bad"


def test_missing_model_is_refused_by_name(tmp_path, text_file):
    with pytest.raises(ModelsFailedError, match="no-such-model"):
        jaxmap.score([str(tmp_path / "no-such-model")], text_file, out=tmp_path / "s.h5", progress=False)


def test_pickle_only_directory_is_refused(tiny_models, tmp_path, text_file):
    directory = tmp_path / "pickled"
    shutil.copytree(tiny_models[0], directory)
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(ModelsFailedError, match=r"pickle-only checkpoint \(pytorch_model.bin\)"):
        jaxmap.score([str(directory)], text_file, out=tmp_path / "s.h5", progress=False)


def test_model_list_files(tmp_path, tiny_models):
    listing = tmp_path / "models.txt"
    listing.write_text(f"# two models\n{tiny_models[0]}\n\n{tiny_models[1]}  # second\n{tiny_models[0]}\n")
    assert expand_references([str(listing)]) == [str(tiny_models[0]), str(tiny_models[1])]
    yaml_list = tmp_path / "models_1018.yaml"
    yaml_list.write_text(f"- {tiny_models[0]}\n- model: {tiny_models[1]}\n  revision: v1\n")
    assert expand_references([str(yaml_list)]) == [str(tiny_models[0]), f"{tiny_models[1]}@v1"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- [1, 2]\n")
    with pytest.raises(CheckpointError, match="bad.yaml entry 1"):
        expand_references([str(bad)])


def _hub_cache(root: Path, repo_id: str, model: Path, commit: str) -> Path:
    """Lay out ``model`` the way huggingface_hub caches a snapshot: blobs, symlinks, refs."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in model.iterdir():
        import hashlib

        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


def test_hub_reference_resolves_from_a_hub_cache(tiny_models, text_file, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = _hub_cache(tmp_path / "hub", "acme/tiny-llama", tiny_models[0], commit)
    store = tmp_path / "hub.h5"
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    for reference in ("acme/tiny-llama", f"acme/tiny-llama@{commit}"):
        subprocess.run(
            [sys.executable, "-m", "jaxmap.cli", "score", reference, "--texts", str(text_file), "--out", str(store), "--quiet"],
            check=True, env=env,
        )
    result = jaxmap.open_store(store)
    # Both spellings resolve to one commit: one model, one row.
    assert result.models == ["acme/tiny-llama"]
    assert result.model_meta[0]["revision"] == commit and result.model_meta[0]["source"] == "hub"
    missing = subprocess.run(
        [sys.executable, "-m", "jaxmap.cli", "score", "acme/absent", "--texts", str(text_file), "--out", str(store)],
        env=env, capture_output=True, text=True,
    )
    assert missing.returncode == 1 and "acme/absent" in missing.stderr and "Traceback" not in missing.stderr


def test_jaxmap_never_imports_torch(tiny_models, text_file, tmp_path):
    script = (
        "import sys, jaxmap\n"
        f"jaxmap.score([{str(tiny_models[0])!r}], {str(text_file)!r}, out={str(tmp_path / 's.h5')!r}, progress=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_score_and_info_cli(tiny_models, text_file, tmp_path, capsys):
    store = tmp_path / "cli.h5"
    arguments = ["score", str(tiny_models[0]), str(tiny_models[1]), "--texts", str(text_file), "--out", str(store), "--quiet", "--batch-tokens", "512"]
    assert main(arguments) == 0
    assert main(["info", str(store)]) == 0
    shown = capsys.readouterr().out
    assert str(tiny_models[1]) in shown and "LlamaForCausalLM" in shown
    assert main(["info", str(store), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [row["model"] for row in summary["models"]] == [str(tiny_models[0]), str(tiny_models[1])]
    expected, counts = reference_loglik(tiny_models[1], TEXTS, "full")
    assert np.abs(jaxmap.open_store(store).loglik[1] - expected).max() < 1e-3
