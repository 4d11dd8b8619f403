"""Scoring jobs over model lists: failed models are recorded and the job goes on, settings are
part of a store's identity, sharded jobs merge into the single job's store, and interrupts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxmap.jobs import parse_shard, score_job
from jaxmap.errors import JaxmapError, StoreMismatchError
from jaxmap.store import merge, open_store


def _jaxmap(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "jaxmap.cli", *map(str, args)], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def broken_models(tiny_models, tmp_path_factory):
    """A model whose weights file is cut short, and one whose weights hold a NaN."""
    from safetensors.numpy import load_file, save_file

    root = tmp_path_factory.mktemp("broken")
    truncated = root / "truncated"
    shutil.copytree(tiny_models[0], truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    nan = root / "nan-weights"
    shutil.copytree(tiny_models[1], nan)
    tensors = load_file(nan / "model.safetensors")
    name = next(n for n in tensors if n.endswith("mlp.down_proj.weight"))
    tensors[name][0, 0] = np.nan
    save_file(tensors, nan / "model.safetensors", metadata={"format": "pt"})
    return truncated, nan


def test_failed_models_are_recorded_and_the_job_goes_on(tiny_models, broken_models, text_file, tmp_path):
    truncated, nan = broken_models
    out = tmp_path / "s.h5"
    listed = [tiny_models[0], truncated, tiny_models[1], nan, tiny_models[2]]
    summary = score_job([str(m) for m in listed], text_file, out, progress=False, batch_tokens=128)
    assert [o.status for o in summary.outcomes if o.status == "scored"] == ["scored"] * 3
    assert set(summary.failures) == {str(truncated), str(nan)}
    assert "non-finite" in summary.failures[str(nan)]
    assert "model.safetensors" in summary.failures[str(truncated)]
    store = open_store(out)
    assert sorted(store.models) == sorted(str(m) for m in tiny_models[:3])
    assert np.isfinite(store.loglik).all()
    report = json.loads((tmp_path / "s.h5.run.json").read_text())
    assert len(report["jobs"]) == 1
    assert {m["reference"]: m["status"] for m in report["jobs"][0]["models"]}[str(nan)] == "failed"

    # The command line: the same job again scores nothing new, names both failures, exits 1.
    result = _jaxmap("score", *listed, "--texts", text_file, "--out", out, "--quiet", "--batch-tokens", 128)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "0 scored, 3 already in the store, 2 failed" in result.stdout
    assert f"FAILED  {nan}: " in result.stdout and f"FAILED  {truncated}: " in result.stdout
    jobs = json.loads((tmp_path / "s.h5.run.json").read_text())["jobs"]
    assert [sum(m["status"] == "scored" for m in job["models"]) for job in jobs] == [3, 0], (
        "the first job's record is kept beside the second's"
    )


def test_other_settings_are_refused_with_the_setting_named(tiny_models, text_file, tmp_path):
    out = tmp_path / "s.h5"
    score_job([str(tiny_models[0])], text_file, out, progress=False, batch_tokens=128)
    with pytest.raises(StoreMismatchError, match="bos_policy='full' in the store, 'paper' asked"):
        score_job([str(tiny_models[1])], text_file, out, progress=False, bos_policy="paper")
    result = _jaxmap("score", tiny_models[1], "--texts", text_file, "--out", out, "--dtype", "bfloat16", "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "dtype='float32' in the store, 'bfloat16' asked" in result.stderr
    assert open_store(out).models == [str(tiny_models[0])]


def test_shards_merge_into_the_single_job(tiny_models, text_file, tmp_path):
    references = [str(m) for m in tiny_models]
    single = score_job(references, text_file, tmp_path / "single.h5", progress=False, batch_tokens=128)
    assert not single.failures
    parts = []
    for index in range(3):
        part = tmp_path / f"part{index}.h5"
        summary = score_job(references, text_file, part, progress=False, batch_tokens=128, shard=f"{index}/3")
        assert [o.reference for o in summary.outcomes] == references[index::3]
        parts.append(part)
    merged = merge(parts, tmp_path / "merged.h5")
    reference = open_store(tmp_path / "single.h5")
    assert sorted(merged.models) == sorted(reference.models)
    for model, row in zip(merged.models, merged.loglik):
        np.testing.assert_array_equal(row, reference.loglik[reference.models.index(model)])


def test_a_model_spelled_two_ways_lands_on_one_shard(tiny_models, text_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_models[0].parent)
    # Without the deduplication, shard 0 would take tiny-0 and tiny-1, shard 1 ./tiny-0/ and tiny-2.
    listed = [str(tiny_models[0]), f"./{tiny_models[0].name}/", str(tiny_models[1]), str(tiny_models[2])]
    parts = [tmp_path / f"part{index}.h5" for index in range(2)]
    summaries = [
        score_job(listed, text_file, part, progress=False, batch_tokens=128, shard=f"{index}/2")
        for index, part in enumerate(parts)
    ]
    assert [[o.reference for o in s.outcomes] for s in summaries] == [
        [str(tiny_models[0]), str(tiny_models[2])], [str(tiny_models[1])]
    ]
    assert sorted(merge(parts, tmp_path / "all.h5").models) == sorted(str(m) for m in tiny_models[:3])


def _config_only(directory, width: int, layers: int) -> str:
    """A Llama directory with only its config: a shard plan reads its cost, and validation
    then fails it at once (no weights), so nothing is scored."""
    from conftest import tiny_llama_config

    directory.mkdir()
    config = tiny_llama_config(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers)
    (directory / "config.json").write_text(json.dumps({**config.to_dict(), "architectures": ["LlamaForCausalLM"]}))
    return str(directory)


def test_shards_follow_the_cost_plan_and_report_their_share(text_file, tmp_path):
    large = _config_only(tmp_path / "large", 512, 8)
    small = [_config_only(tmp_path / f"small-{i}", 64, 2) for i in range(3)]
    listed = [large, *small]
    taken, said = [], []
    for index in range(2):
        lines = []
        summary = score_job(listed, text_file, tmp_path / f"cost{index}.h5", progress=False, shard=f"{index}/2", report=lines.append)
        taken.append([o.reference for o in summary.outcomes])
        said.append(lines[0])
    # The large model outweighs the three small ones together: it gets a shard of its own.
    assert taken == [[large], small]
    shares = [float(re.match(r"shard \d/2: \d models?, ([\d.]+)% of the estimated cost \(ideal 50.0%\)", line)[1]) for line in said]
    assert shares[0] > 50 > shares[1] and sum(shares) == pytest.approx(100, abs=0.11)
    assert said[0].split("plan ")[1] == said[1].split("plan ")[1], "both shards computed one plan"

    summary = score_job(listed, text_file, tmp_path / "index0.h5", progress=False, shard="0/2", shard_by="index")
    assert [o.reference for o in summary.outcomes] == [large, small[1]]
    with pytest.raises(JaxmapError, match="unknown shard rule 'size'"):
        score_job(listed, text_file, tmp_path / "bad.h5", progress=False, shard="0/2", shard_by="size")


@pytest.mark.parametrize("bad", ["3/3", "-1/2", "1", "a/b", "1/0"])
def test_bad_shards_are_refused(bad):
    with pytest.raises(JaxmapError, match="expected I/N"):
        parse_shard(bad)
