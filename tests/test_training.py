"""Training with optax on the NNX module, orbax checkpoints as model references, runs as
trajectories (``jaxmap train``, ``jaxmap score RUN``), and Flax-layout orbax checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
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


@pytest.mark.parametrize(
    "sizes, named",
    [
        (["--hidden-size", "30", "--heads", "4"], "--hidden-size 30 is not a multiple of --heads 4"),
        (["--kv-heads", "3"], "--heads 4 is not a multiple of --kv-heads 3"),
        (["--hidden-size", "36", "--heads", "4"], "LlamaForCausalLM cannot be built at --hidden-size 36"),
    ],
)
def test_train_refuses_head_sizes_that_do_not_divide_before_any_work(text_file, tmp_path, capsys, sizes, named):
    build_tokenizer(tmp_path / "tokenizer", adds_bos=True)
    out = tmp_path / "run"
    code = main([
        "train", "--architecture", "llama", "--tokenizer", str(tmp_path / "tokenizer"), "--texts",
        str(text_file), "--out", str(out), "--quiet", *sizes,
    ])
    err = capsys.readouterr().err
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def _copy_step(run, tmp_path) -> Path:
    """A copy of the run's last checkpoint, with config and tokenizer, to damage."""
    step = tmp_path / "run" / run.checkpoints[-1].name
    shutil.copytree(run.checkpoints[-1], step)
    return step


def test_a_checkpoint_without_its_ocdbt_manifest_is_named_in_one_line(run, text_file, tmp_path, capfd):
    step = _copy_step(run, tmp_path)
    (step / "params" / "manifest.ocdbt").unlink()
    with pytest.raises(CheckpointError, match=r"params has no manifest\.ocdbt .*cannot be read"):
        jaxmap.checkpoints.validate(resolve(str(step)))
    capfd.readouterr()
    assert main(["score", str(step), "--texts", str(text_file), "--out", str(tmp_path / "s.h5"), "--quiet"]) == 1
    err = capfd.readouterr().err
    assert "manifest.ocdbt" in err and str(step) in err
    assert "a bug in jaxmap" not in err and "Traceback" not in err and "Event loop" not in err, err


def test_a_checkpoint_without_its_jaxmap_file_says_that_file_is_missing(run, tmp_path):
    step = _copy_step(run, tmp_path)
    (step / "jaxmap_checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match=r"jaxmap_checkpoint\.json is missing from .*read only with that file"):
        jaxmap.checkpoints.validate(resolve(str(step)))


def _train_args(tokenizer: Path, text_file: Path, out: Path, *more: str) -> list[str]:
    return [
        "train", "--architecture", "llama", "--tokenizer", str(tokenizer), "--texts", str(text_file),
        "--out", str(out), "--hidden-size", "32", "--layers", "1", "--heads", "2", "--batch-size", "2",
        "--seq-len", "16", "--warmup-steps", "1", "--quiet", *more,
    ]


def test_a_full_disk_stops_training_in_one_line_and_keeps_the_checkpoints(text_file, small_filesystem, tmp_path, capsys):
    from conftest import fill_filesystem

    build_tokenizer(tmp_path / "tokenizer", adds_bos=True)
    out = small_filesystem / "run"
    fill_filesystem(small_filesystem, leave_bytes=600_000)  # a few checkpoints of this size
    code = main(_train_args(tmp_path / "tokenizer", text_file, out, "--steps", "40", "--save-every", "2"))
    err = capsys.readouterr().err
    kept = sorted(p.name for p in out.iterdir())
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert len(kept) >= 2 and kept == [f"step_{step:08d}" for step in range(0, 2 * len(kept), 2)], kept
    refused = f"step_{2 * len(kept):08d}"
    assert f"{out}/{refused}: cannot write (the disk is full" in err, err
    assert f"its {len(kept)} checkpoints are kept in {out} ({kept[0]} … {kept[-1]})" in err, err
    jaxmap.checkpoints.validate(resolve(str(out / kept[-1])))  # complete, readable


def test_a_disk_that_fills_during_the_write_removes_the_partial_checkpoint(run, small_filesystem):
    """Past the free-space check (the arrays fit, the whole checkpoint does not), so the write
    itself fails, in orbax's worker threads."""
    from conftest import fill_filesystem

    from jaxmap.checkpoints.orbax import save_checkpoint
    from jaxmap.errors import OutputError

    params = run.module.params_tree()
    array_bytes = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(params))
    out = small_filesystem / "run"
    out.mkdir()
    fill_filesystem(small_filesystem, leave_bytes=array_bytes + 4096)
    with pytest.raises(OutputError, match=r"step_00000007: cannot write \(the disk is full\)"):
        save_checkpoint(out, 7, params, run.module.hf_config, run.module.tokenizer)
    assert list(out.iterdir()) == []


def test_sigint_says_how_many_checkpoints_were_kept_and_where(text_file, tmp_path):
    """A real process stopped by SIGINT while it writes a checkpoint every step: the checkpoint
    in progress is finished (or never begun), and the line counts what is on disk."""
    import signal
    import subprocess
    import sys
    import time

    build_tokenizer(tmp_path / "tokenizer", adds_bos=True)
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxmap.cli", *_train_args(tmp_path / "tokenizer", text_file, out, "--steps", "2000", "--save-every", "1")],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("step_*"))) < 3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        err = process.communicate(timeout=60)[1]
    finally:
        process.kill()
    steps = sorted(p.name for p in out.glob("step_*"))
    assert process.returncode == 130, err
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [], "no partial checkpoint"
    assert err.strip() == (
        f"jaxmap train: stopped by SIGINT; its {len(steps)} checkpoints are kept in {out} "
        f"({steps[0]} … {steps[-1]}); training.json was not written"
    )
    jaxmap.checkpoints.validate(resolve(str(out / steps[-1])))
