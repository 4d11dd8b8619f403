"""Training with optax on the NNX module, orbax checkpoints as model references, runs as
trajectories (``jaxmap train``, ``jaxmap score RUN``), and Flax-layout orbax checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxmap
from jaxmap.checkpoints import CheckpointError, expand_references, resolve
from jaxmap.cli import main
from jaxmap.training import _train_step, optimizer, scratch_config, token_windows, train

from conftest import TEXTS, build_tokenizer


def test_an_nnx_fine_tuning_step_lowers_the_loss(tiny_models):
    module = jaxmap.load_module(str(tiny_models[1]))
    windows = token_windows(TEXTS, module.tokenizer, seq_len=24)
    batch = jnp.asarray(windows[:4])
    mask = jnp.ones((4, 24), bool)
    before = float(module.mean_nll(batch, mask))
    opt = nnx.Optimizer(module, optimizer(10, 1e-2, 1, 0.0, 1.0), wrt=nnx.Param)
    step = _train_step()
    first = float(step(module, opt, batch))
    assert first == pytest.approx(before, abs=1e-5), "the step reports the loss before its update"
    for _ in range(3):
        step(module, opt, batch)
    after = float(module.mean_nll(batch, mask))
    assert after < before - 0.05, (before, after)


@pytest.fixture(scope="module")
def run(tmp_path_factory, text_file):
    """A tiny Llama trained from scratch for 6 steps, checkpointed every 3."""
    root = tmp_path_factory.mktemp("training")
    tokenizer = build_tokenizer(root / "tokenizer", adds_bos=True)
    config = scratch_config("llama", tokenizer, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    return train(
        text_file, root / "run", hf_config=config, tokenizer=tokenizer, steps=6, batch_size=4,
        seq_len=32, warmup_steps=2, save_every=3, progress=False,
    )


def test_training_writes_self_describing_checkpoints_in_step_order(run):
    assert [c.name for c in run.checkpoints] == ["step_00000000", "step_00000003", "step_00000006"]
    for checkpoint in run.checkpoints:
        assert {"config.json", "tokenizer.json", "jaxmap_checkpoint.json", "params"} <= {p.name for p in checkpoint.iterdir()}
    assert json.loads((run.checkpoints[2] / "jaxmap_checkpoint.json").read_text())["step"] == 6
    record = json.loads((run.run_dir / "training.json").read_text())
    assert record["losses"] == run.losses and len(run.losses) == 6
    assert run.losses[-1] < run.losses[0]
    # The run directory, and a quoted glob, are the trajectory in step order.
    assert expand_references([str(run.run_dir)]) == [str(c) for c in run.checkpoints]
    assert expand_references([str(run.run_dir / "step_*")]) == [str(c) for c in run.checkpoints]
    with pytest.raises(CheckpointError, match="training run of 3 checkpoints"):
        resolve(str(run.run_dir))
    with pytest.raises(CheckpointError, match="matches no file"):
        expand_references([str(run.run_dir / "nothing_*")])


def test_a_reloaded_checkpoint_scores_identically(run, text_file, tmp_path):
    store_path = tmp_path / "run.h5"
    assert main(["score", str(run.run_dir), "--texts", str(text_file), "--out", str(store_path), "--quiet"]) == 0
    store = jaxmap.open_store(store_path)
    assert store.models == [str(c) for c in run.checkpoints]
    in_memory = run.module.score(text_file)
    assert np.array_equal(store.loglik[-1], in_memory.loglik), "orbax keeps float32 params exactly"
    assert not np.array_equal(store.loglik[0], store.loglik[-1]), "training moved the model"
    assert store.model_meta[-1]["source"] == "orbax"


def _flax_tree(hf_directory: Path) -> dict:
    """A transformers-Flax-named params tree of an HF Llama checkpoint: nested dicts, one per
    layer, kernels [in, out], embedding tables named ``embedding``."""
    from safetensors.numpy import load_file

    tree: dict = {}
    for name, tensor in load_file(hf_directory / "model.safetensors").items():
        *parents, leaf = name.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        if parents[-1] == "embed_tokens":
            node["embedding"] = tensor
        elif parents[-1].endswith("_proj") or parents[-1] == "lm_head":
            node["kernel"] = np.ascontiguousarray(tensor.T)
        else:
            node[leaf] = tensor
    return tree


def test_a_flax_training_run_laid_out_by_orbax_is_scored(tiny_models, text_file, tmp_path):
    import orbax.checkpoint as ocp

    run_dir = tmp_path / "flax-run"
    manager = ocp.CheckpointManager(run_dir.resolve())
    state = {"params": _flax_tree(tiny_models[2]), "step": np.int32(100)}
    manager.save(100, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_models[2] / name, run_dir / name)
    references = expand_references([str(run_dir)])
    assert references == [str(run_dir / "100")]
    flax_store = jaxmap.score(references, text_file, out=tmp_path / "flax.h5", progress=False)
    hf_store = jaxmap.score([str(tiny_models[2])], text_file, out=tmp_path / "hf.h5", progress=False)
    assert np.array_equal(flax_store.loglik[0], hf_store.loglik[0])


def test_other_orbax_layouts_are_refused_with_one_line(tiny_models, tmp_path):
    import orbax.checkpoint as ocp

    step = tmp_path / "run" / "7"
    ocp.PyTreeCheckpointer().save(step.resolve(), {"encoder": {"w": np.ones((3, 3), np.float32)}})
    with pytest.raises(CheckpointError, match="without config.json"):
        resolve(str(step))
    shutil.copy(tiny_models[0] / "config.json", step.parent / "config.json")
    shutil.copy(tiny_models[0] / "tokenizer.json", step.parent / "tokenizer.json")
    with pytest.raises(CheckpointError, match="not a params tree in Hugging Face's Flax naming"):
        jaxmap.checkpoints.validate(resolve(str(step)))


def test_train_cli_fine_tunes_a_model(tiny_models, text_file, tmp_path, capsys):
    out = tmp_path / "tuned"
    code = main([
        "train", "--model", str(tiny_models[3]), "--texts", str(text_file), "--out", str(out),
        "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--save-every", "2", "--quiet",
    ])
    assert code == 0
    assert sorted(p.name for p in out.glob("step_*")) == ["step_00000000", "step_00000002"]
    assert "loss" in capsys.readouterr().out
    again = main(["train", "--model", str(tiny_models[3]), "--texts", str(text_file), "--out", str(out), "--quiet"])
    assert again == 2 and "earlier run" in capsys.readouterr().err
