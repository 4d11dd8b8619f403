"""`jaxmap plan`: parameter counts, memory, model axes, MFU, shard plans and errors, from configs
laid out as the hub caches them (HF_HUB_OFFLINE), never weights."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from jaxmap.cli import main
from jaxmap.planning import (
    ASSUMED_MFU, DEVICE_KINDS, MEMORY_FRACTION, activation_bytes, measured_mfu, model_config, plan_shards,
)
from jaxmap.texts import load_texts

ROOT = Path(__file__).resolve().parent.parent


def _configs() -> dict[str, tuple[str, object]]:
    """Published models' hyperparameters as transformers' own config classes write them."""
    import transformers as T

    return {
        "meta-llama/Llama-2-7b-hf": ("LlamaForCausalLM", T.LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)),
        "meta-llama/Llama-2-70b-hf": ("LlamaForCausalLM", T.LlamaConfig(
            hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
            num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096)),
        "mistralai/Mixtral-8x7B-v0.1": ("MixtralForCausalLM", T.MixtralConfig(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, num_local_experts=8, vocab_size=32000)),
        "EleutherAI/pythia-160m": ("GPTNeoXForCausalLM", T.GPTNeoXConfig(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            vocab_size=50304, rotary_pct=0.25, max_position_embeddings=2048)),
        "openai-community/gpt2": ("GPT2LMHeadModel", T.GPT2Config()),
        "Qwen/Qwen3-0.6B": ("Qwen3ForCausalLM", T.Qwen3Config(
            hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True)),
    }


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """The configs as huggingface_hub caches them: blobs, relative symlinks, refs/main."""
    root = tmp_path_factory.mktemp("hub-cache")
    for repo_id, (architecture, config) in _configs().items():
        data = json.dumps({**config.to_dict(), "architectures": [architecture]}).encode()
        repo = root / f"models--{repo_id.replace('/', '--')}"
        blob = hashlib.sha256(data).hexdigest()
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        (repo / "blobs").mkdir(parents=True)
        (repo / "blobs" / blob).write_bytes(data)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").symlink_to(Path("../../blobs") / blob)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    return root


@pytest.fixture
def offline(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan-texts") / "texts.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(40):
            handle.write(json.dumps({"id": str(i), "text": "The cat sat on the mat. " * (10 + i)}) + "\n")
    return path


def _plan(tmp_path, capsys, *args) -> tuple[dict, str]:
    out = tmp_path / "plan.json"
    status = main(["plan", *map(str, args), "--json", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    return json.loads(out.read_text()), printed


def test_parameter_counts_match_transformers(offline, texts, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    plan, printed = _plan(tmp_path, capsys, *_configs(), "--texts", texts, "--devices", "8xH100")
    counted = {m["reference"]: m["parameters"] for m in plan["models"]}
    for repo_id, (_, config) in _configs().items():
        with torch.device("meta"):  # shapes only: no memory for the 70B model's weights
            model = AutoModelForCausalLM.from_config(config)
        expected = sum(p.numel() for p in model.parameters())
        assert counted[repo_id] == pytest.approx(expected, rel=0.01), repo_id
        assert repo_id in printed
    # Every position passes every matmul weight twice (multiply, add): FLOPs are close to
    # 2 x parameters x tokens for a dense model whose embedding table is a small part of it.
    llama = next(m for m in plan["models"] if m["reference"] == "meta-llama/Llama-2-7b-hf")
    assert llama["flops"] == pytest.approx(2 * llama["parameters"] * llama["tokens"], rel=0.05)


def test_a_model_too_big_for_one_device_gets_a_model_axis(offline, texts, tmp_path, capsys):
    plan, printed = _plan(
        tmp_path, capsys, "meta-llama/Llama-2-70b-hf", "EleutherAI/pythia-160m", "meta-llama/Llama-2-7b-hf",
        "--texts", texts, "--devices", "8xH100", "--dtype", "bfloat16",
    )
    models = {m["reference"]: m for m in plan["models"]}
    big = models["meta-llama/Llama-2-70b-hf"]
    usable = MEMORY_FRACTION * DEVICE_KINDS["h100"].memory
    assert big["weight_bytes"] == 2 * big["parameters"] > DEVICE_KINDS["h100"].memory
    axis = big["model_axis"]
    assert axis in (2, 4, 8) and big["device_bytes"] <= usable
    # The smallest axis that fits: half of it does not.
    _, config = model_config("meta-llama/Llama-2-70b-hf")
    assert big["weight_bytes"] / (axis // 2) + activation_bytes(config, plan["batch_tokens"], axis // 2) > usable
    assert models["EleutherAI/pythia-160m"]["model_axis"] == 1
    # Each shard gets as many devices as the widest model needs.
    shards = plan["shards"]
    assert shards["devices_per_shard"] == axis and shards["count"] == 8 // axis
    assert f"--mesh data=1,model={axis}" in printed
    assert sorted(m for s in shards["plan"] for m in s["models"]) == sorted(models)
    # No plan beats perfect balance over every device.
    totals = plan["totals"]
    assert totals["makespan_hours"] >= totals["device_hours"] / 8 * (1 - 1e-9)

    # In float32 the 70B model fits no pair of H100s.
    plan, printed = _plan(tmp_path, capsys, "meta-llama/Llama-2-70b-hf", "--texts", texts, "--devices", "2xH100")
    assert plan["models"][0]["model_axis"] is None
    assert "do not fit on 2 h100 device(s)" in printed and "no fit" in printed


def test_plan_shards_are_the_ones_score_cuts(offline, texts, tmp_path, capsys):
    listed = ["EleutherAI/pythia-160m", "meta-llama/Llama-2-7b-hf", "openai-community/gpt2", "Qwen/Qwen3-0.6B",
              "mistralai/Mixtral-8x7B-v0.1"]
    plan, printed = _plan(tmp_path, capsys, *listed, "--texts", texts, "--devices", "4xH200", "--dtype", "bfloat16")
    count = plan["shards"]["count"]
    assert count == 4 // plan["shards"]["devices_per_shard"] > 1
    cut = plan_shards(listed, count, load_texts(texts))
    assert [s["models"] for s in plan["shards"]["plan"]] == [cut.models(i) for i in range(count)]
    assert plan["shards"]["fingerprint"] == cut.fingerprint and cut.fingerprint in printed


def test_mfu_is_measured_where_benchmarks_have_it(offline, texts, tmp_path, capsys):
    plan, printed = _plan(tmp_path, capsys, "openai-community/gpt2", "--texts", texts, "--devices", "8xH100")
    assert plan["mfu"] == ASSUMED_MFU and "assumed" in plan["mfu_source"] and "assumed" in printed

    # The CPU results of the throughput benchmark: the newest run with a jaxmap float32 contender.
    runs = []
    for path in (ROOT / "benchmarks" / "results").glob("throughput-cpu-*.json"):
        data = json.loads(path.read_text())
        if "jaxmap-f32" in data["contenders"]:
            fractions = [r["fraction_of_peak"] for r in data["contenders"]["jaxmap-f32"]["rounds"]]
            runs.append((data["created"], float(np.median(fractions)), path.name))
    if not runs:
        pytest.skip("no CPU throughput results in benchmarks/results")
    _, expected, name = max(runs)
    plan, _ = _plan(tmp_path, capsys, "openai-community/gpt2", "--texts", texts, "--devices", "1xcpu")
    assert plan["mfu"] == pytest.approx(expected) and name in plan["mfu_source"]
    assert plan["batch_tokens"] == 2048  # the engine's CPU default

    # A result for another machine name is not taken for this kind; one named after it is.
    results = tmp_path / "results"
    results.mkdir()
    run = {"created": "2030-01-01", "machine": {"name": "h100-8gpu"},
           "contenders": {"jaxmap-bf16": {"rounds": [{"fraction_of_peak": 0.5}, {"fraction_of_peak": 0.3}]}}}
    (results / "throughput-h100.json").write_text(json.dumps(run))
    assert measured_mfu("h100", "bfloat16", results) == (
        pytest.approx(0.4), f"{results / 'throughput-h100.json'} (jaxmap-bf16)"
    )
    assert measured_mfu("h100", "float32", results) is None
    assert measured_mfu("h10", "bfloat16", results) is None


def test_a_device_kind_can_be_added(offline, texts, tmp_path, capsys):
    spec = "name=tiny-chip,flops=100T,memory=10G"
    plan, printed = _plan(
        tmp_path, capsys, "meta-llama/Llama-2-7b-hf", "--texts", texts, "--devices", "4xtiny-chip",
        "--device-spec", spec, "--dtype", "bfloat16", "--mfu", "0.5",
    )
    model = plan["models"][0]
    # 13.5 GB of bfloat16 weights and about 2.7 GB of activations per device overfill 75% of a
    # 10 GB device when split over two; over four they fit.
    assert model["model_axis"] == 4
    assert model["seconds"] == pytest.approx(model["flops"] / (100e12 * 0.5 * 4))
    assert plan["mfu_source"] == "given with --mfu"

    specs = tmp_path / "kinds.json"
    specs.write_text(json.dumps({"big-chip": {"flops": "1P", "fp32": 2e14, "memory": "1T"}}))
    plan, _ = _plan(tmp_path, capsys, "meta-llama/Llama-2-7b-hf", "--texts", texts, "--devices", "1xbig-chip",
                    "--device-spec", specs)
    assert plan["models"][0]["model_axis"] == 1 and plan["devices"]["float32_flops"] == 2e14


@pytest.mark.parametrize(
    "args, message",
    [
        (["--devices", "8xB300"], "unknown device kind 'B300'; known: a100, cpu, h100, h200, tpu-v5e, tpu-v5p"),
        (["--devices", "H100"], "expected COUNTxKIND, e.g. 8xH100"),
        (["--devices", "0xH100"], "expected COUNTxKIND"),
        (["--devices", "1xodd", "--device-spec", "name=odd,flops=1T"], "a device spec has flops= and memory="),
        (["--devices", "1xodd", "--device-spec", "name=odd,flops=fast,memory=1G"], "flops 'fast' is not a positive number"),
        (["--devices", "1xodd", "--device-spec", "name=odd,flops=1T,memory=1G"], "has no float32 peak"),
        (["--devices", "1xH100", "--mfu", "2"], "MFU 2.0 must be in (0, 1]"),
    ],
)
def test_errors_are_one_line(offline, texts, capsys, args, message):
    status = main(["plan", "openai-community/gpt2", "--texts", str(texts), *args])
    error = capsys.readouterr().err
    assert status == 2
    assert error.count("\n") == 1 and message in error and "Traceback" not in error


def test_an_unreadable_config_is_costed_at_the_median(offline, texts, tmp_path, capsys):
    listed = ["openai-community/gpt2", "nobody/nothing", "meta-llama/Llama-2-7b-hf", "EleutherAI/pythia-160m"]
    plan, printed = _plan(tmp_path, capsys, *listed, "--texts", texts, "--devices", "2xH100")
    flops = {m["reference"]: m["flops"] for m in plan["models"]}
    read = sorted(flops[m] for m in listed if m != "nobody/nothing")
    assert flops["nobody/nothing"] == read[1]
    assert re.search(r"nobody/nothing +config unreadable \(.*HF_HUB_OFFLINE", printed)
    assert "costed at the median: nobody/nothing" in printed
