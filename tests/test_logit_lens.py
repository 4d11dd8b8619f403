"""The logit lens: every layer's residual stream scored through the final norm and the
unembedding in one forward pass, one store row per layer, against transformers
(``output_hidden_states=True``, the final norm and the LM head applied by hand)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers

import jaxmap
from jaxmap.jobs import layer_row_name, score_job

from conftest import TEXTS, save_random_model

TOLERANCE = 1e-3
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, vocab_size=300)

# name: (config factory, save_random_model options, dotted path of the final norm module)
CASES = {
    "llama": (
        lambda: transformers.LlamaConfig(
            **SMALL, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256
        ),
        {},
        "model.norm",
    ),
    "gpt_neox-parallel": (
        lambda: transformers.GPTNeoXConfig(
            **SMALL, num_attention_heads=4, max_position_embeddings=256, use_parallel_residual=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        ),
        {"adds_bos": False},
        "gpt_neox.final_layer_norm",
    ),
    "gpt2": (
        lambda: transformers.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, vocab_size=300),
        {"adds_bos": False},
        "transformer.ln_f",
    ),
    "gemma3-softcap": (
        lambda: transformers.Gemma3TextConfig(
            **SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            query_pre_attn_scalar=24, sliding_window=6, max_position_embeddings=256,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            # A small cap, so that tanh bends the random model's logits.
            final_logit_softcapping=3.0,
        ),
        {"norm_center": 0.0},
        "model.norm",
    ),
}


def reference_layer_loglik(directory: Path, texts: list[str], norm_path: str) -> np.ndarray:
    """[L+1, N] per-text log-likelihoods (full BOS policy) read from transformers' hidden
    states: entry i is ``hidden_states[i]``; all but the last get the final norm by hand (the
    last has it already), then the LM head (and the final softcap, if any)."""
    import torch

    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    norm = model
    for part in norm_path.split("."):
        norm = getattr(norm, part)
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    n_ctx = getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows = []
    for text in texts:
        ids = ([start] + tokenizer.encode(text, add_special_tokens=False))[:n_ctx]
        if len(ids) < 2:
            rows.append(np.zeros(model.config.num_hidden_layers + 1))
            continue
        with torch.no_grad():
            output = model(torch.tensor([ids]), output_hidden_states=True)
            states = output.hidden_states
            per_layer = []
            for index, state in enumerate(states):
                normed = state if index == len(states) - 1 else norm(state)
                logits = head(normed)[0, :-1].double()
                if softcap:
                    logits = softcap * torch.tanh(logits / softcap)
                if index == len(states) - 1:
                    # The last hidden state is the model's own: its logits are the model's.
                    assert torch.allclose(logits, output.logits[0, :-1].double(), atol=1e-4)
                picked = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])
                per_layer.append(float(picked.sum()))
        rows.append(np.array(per_layer))
    return np.array(rows).T


# Texts of two length buckets (each bucket compiles the lens program once) and an empty one.
LENS_TEXTS = [TEXTS[3], TEXTS[6][:70], TEXTS[3] + " " + TEXTS[0][:12], ""]


@pytest.fixture(scope="module")
def lens_text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lens-texts") / "texts.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i, text in enumerate(LENS_TEXTS):
            handle.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def lens_stores(lens_models, lens_text_file, tmp_path_factory) -> dict:
    """Each case's model scored with the logit lens on one device, once per module."""
    root = tmp_path_factory.mktemp("lens-stores")
    stores = {}

    def get(case: str):
        if case not in stores:
            stores[case] = jaxmap.score(
                [str(lens_models[case])], lens_text_file, out=root / f"{case}.h5",
                logit_lens=True, progress=False,
            )
        return stores[case]

    return get


def _rows(store, names: list[str]) -> np.ndarray:
    return np.array([store.loglik[store.models.index(name)] for name in names])


@pytest.fixture(scope="module")
def lens_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lens-models")
    return {
        name: save_random_model(root / name, factory(), seed=3, **options)
        for name, (factory, options, _) in CASES.items()
    }


@pytest.mark.parametrize("case", list(CASES))
def test_every_layer_matches_transformers(case, lens_models, lens_stores):
    directory = lens_models[case]
    model = str(directory)
    store = lens_stores(case)
    layers = CASES[case][0]().num_hidden_layers
    names = [layer_row_name(model, i) for i in range(layers + 1)]
    assert sorted(store.models) == sorted([model, *names])
    expected = reference_layer_loglik(directory, LENS_TEXTS, CASES[case][2])
    delta = np.abs(_rows(store, names) - expected).max(axis=1)
    print(f"logit-lens parity {case}: max |delta| per layer (nats) {np.array2string(delta, precision=2)}")
    assert delta.max() <= TOLERANCE, delta
    # The layers really differ from each other (a lens reading one state everywhere would not).
    assert np.abs(np.diff(expected, axis=0)).max() > 0.1
    # The last layer's row is the model's own row, bit for bit.
    own = store.loglik[store.models.index(model)]
    assert np.array_equal(store.loglik[store.models.index(names[-1])], own)
    for layer, name in enumerate(names):
        meta = store.model_meta[store.models.index(name)]
        assert (meta["layer"], meta["num_layers"], meta["parent_model"]) == (layer, layers, model)
        assert meta["key"] == layer_row_name(meta["parent_key"], layer)


def test_resuming_scores_only_missing_rows(lens_models, lens_text_file, tmp_path):
    model, text_file = str(lens_models["gpt2"]), lens_text_file
    out = tmp_path / "store.h5"
    # A store holding the plain row only: the lens run adds the layer rows, keeps that row.
    score_job([model], text_file, out=out, progress=False)
    before = jaxmap.open_store(out)
    summary = score_job([model], text_file, out=out, progress=False, logit_lens=True)
    assert [o.status for o in summary.outcomes] == ["scored"]
    after = jaxmap.open_store(out)
    assert len(after.models) == 1 + 4
    assert after.row_checksums[after.models.index(model)] == before.row_checksums[0]
    # The lens program's last layer equals the plain program's row bit for bit on CPU (the
    # same operations on the same inputs; another backend could fuse them differently).
    np.testing.assert_array_equal(after.loglik[after.models.index(layer_row_name(model, 3))], before.loglik[0])
    # Every row there: nothing is scored again.
    summary = score_job([model], text_file, out=out, progress=False, logit_lens=True)
    assert [o.status for o in summary.outcomes] == ["skipped"]
    # One layer row missing: the model is scored again and only that row committed.
    dropped = layer_row_name(model, 1)
    jaxmap.drop(out, [dropped])
    summary = score_job([model], text_file, out=out, progress=False, logit_lens=True)
    assert [o.status for o in summary.outcomes] == ["scored"]
    resumed = jaxmap.open_store(out)
    assert sorted(resumed.models) == sorted(after.models)
    np.testing.assert_array_equal(
        resumed.loglik[resumed.models.index(dropped)], after.loglik[after.models.index(dropped)]
    )
    # A plain run over a store with lens rows sees the model as done.
    summary = score_job([model], text_file, out=out, progress=False)
    assert [o.status for o in summary.outcomes] == ["skipped"]


def test_cli_logit_lens(lens_models, lens_text_file, tmp_path):
    text_file = lens_text_file
    model = str(lens_models["llama"])
    out = tmp_path / "cli.h5"
    from jaxmap.cli import main

    assert main(["score", model, "--texts", str(text_file), "--out", str(out), "--logit-lens", "--quiet"]) == 0
    assert len(jaxmap.open_store(out).models) == 1 + 4


_SHARDED_SCRIPT = """
import json, sys
import jaxmap
from jaxmap.jobs import score_job
model, texts, out = sys.argv[1:]
score_job([model], texts, out=out, progress=False, logit_lens=True, mesh="data=1,model=2")
store = jaxmap.open_store(out)
print(json.dumps({"models": store.models, "loglik": store.loglik.tolist()}))
"""


def test_logit_lens_on_a_vocab_sharded_mesh(lens_models, lens_stores, lens_text_file, tmp_path):
    model, text_file = str(lens_models["gemma3-softcap"]), lens_text_file
    single = lens_stores("gemma3-softcap")
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}
    result = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT, model, str(text_file), str(tmp_path / "two.h5")],
        capture_output=True, text=True, env=environment, check=True,
    )
    sharded = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(sharded["models"]) == sorted(single.models)
    for name, row in zip(sharded["models"], sharded["loglik"]):
        np.testing.assert_allclose(row, single.loglik[single.models.index(name)], rtol=0, atol=1e-4)


def test_demo_adds_logit_lens_threads(lens_models, tmp_path):
    from jaxmap.demo import run_demo

    model = str(lens_models["llama"])
    printed = []
    run_demo(
        tmp_path / "demo", n_texts=4, models=[model], progress=False, echo=printed.append,
        train_steps=0, logit_lens=[model], lens_texts=3,
    )
    lens = jaxmap.open_store(tmp_path / "demo" / "lens.h5")
    assert len(lens.text_ids) == 3
    assert sorted(lens.models) == sorted([model, *(layer_row_name(model, i) for i in range(4))])
    report = (tmp_path / "demo" / "report.md").read_text("utf-8")
    assert "Logit lens (3 texts" in report
    # The report shows a model by the last part of its path.
    assert f"\n  {Path(model).name} (3 layers): c = " in report
    assert (tmp_path / "demo" / "lens.png").stat().st_size > 10_000
