"""Sharded scoring: mesh specs, tensor-parallel placement and the vocab-sharded log-prob kernel.

Every port is scored on 4 virtual CPU devices with meshes data=2,model=2 and data=1,model=4 and
compared with the same process's single-device result (≤ 1e-4 nats per text, float32). The
test process's JAX already runs with one device, and the device count is fixed when a backend
starts, so those checks run in one subprocess: this file, run as a script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TOLERANCE = 1e-4
MESHES = ("data=2,model=2", "data=1,model=4")
BATCH_TOKENS = 128
# What sharding can change, in as few batch shapes as cover it (each shape is compiled once per
# model and mesh, most of this file's cost): with buckets of BATCH_TOKENS, the short texts (an
# empty one, and 1, 5 and 11 scored tokens) share one batch of 4 rows, split over the data
# axis, one of them padding; the 46-token text fills a batch of 1 row, odd, which the data
# axis pads to 2, spans every sliding window of the cases (5-7), and is cut to the context of
# the 40-position GPT-2. Tokenization, the other texts' concern, is the same on every mesh.
SHARDED_TEXTS = ["Hello world.", "", "A", "short", "Ünïcödé façade — 東京 🙂 naïve café."]
CONDITIONAL_PAIRS = [("Hello ", "world."), ("Ünïcödé faç", "ade — 東京"), ("", "short")]


def _odd_sizes_config():
    import transformers

    # Heads (6) and MLP columns (90) divide a model axis of 2 but not 4; kv heads (3) neither.
    return transformers.LlamaConfig(
        hidden_size=96, intermediate_size=90, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=3, head_dim=16, vocab_size=302, max_position_embeddings=256,
    )


def _gemma3_softcap_config():
    from test_parity import CASES

    config = CASES["gemma3"][0]()
    # The final-logit softcap is applied inside the tiles, before padding rows are masked.
    config.final_logit_softcapping = 30.0
    return config


def sharded_cases() -> dict:
    """name -> (config factory, save options, vocabulary size); some vocabularies divide by 4,
    some do not (tied and untied)."""
    from test_parity import CASES

    def parity(name: str, vocab: int):
        make_config, options = CASES[name]
        return make_config, options, vocab

    def alibi(name: str, vocab: int):
        from test_parity_alibi import CASES as ALIBI_CASES

        make_config, options = ALIBI_CASES[name]
        return make_config, options, vocab

    def mixture_of_experts(vocab: int):
        from test_parity_moe import qwen2_moe

        # The dense (shared-expert) MLP as wide as the HF intermediate_size the checks expect;
        # the experts' 40 columns split over both model axes.
        return (lambda: qwen2_moe(intermediate_size=56)), {"adds_bos": False}, vocab

    def olmo(name: str, vocab: int):
        from test_parity_olmo import CASES as OLMO_CASES

        make_config, options = OLMO_CASES[name]
        return make_config, options, vocab

    def parallel_attention(name: str, vocab: int):
        from test_parity_parallel_attention import CASES as PARALLEL_CASES

        make_config, options = PARALLEL_CASES[name]
        return make_config, options, vocab

    # One case per port, and within Llama one per head layout that splits differently. No
    # MQA case: its kv head replicated while the q heads are split is the layout of
    # llama-gqa-tied on model=4 (2 kv heads replicated, 4 q heads split) and of llama-odd-sizes
    # on model=2 (3 kv heads replicated, 6 q heads split); a vocabulary of 302 (split on 2, not
    # on 4) have gpt2, llama-odd-sizes and stablelm.
    return {
        "llama-mha-untied": parity("llama-mha-untied", 300),
        "llama-gqa-tied": parity("llama-gqa-tied", 301),
        "mistral-sliding-window": parity("mistral-sliding-window", 303),
        "qwen2-qkv-bias": parity("qwen2-qkv-bias", 300),
        "neox-parallel-partial-rotary": parity("neox-parallel-partial-rotary", 301),
        "gpt2": parity("gpt2", 302),
        "gemma3-softcap": (_gemma3_softcap_config, {"norm_center": 0.0}, 301),
        "llama-odd-sizes": (_odd_sizes_config, {}, 302),
        # ALiBi: 20 heads with distinct slopes, split over the model axis with their heads.
        "falcon-rw-alibi": alibi("falcon-rw-mha-sequential-alibi-20-heads", 303),
        # An output-projection bias, split over the model axis with the vocabulary.
        "phi-qk-layernorm-gqa": parallel_attention("phi-qk-layernorm-gqa", 301),
        # Per-head q/k norm scales [heads, head_dim], replicated while q and k are split.
        "stablelm-parallel-bias-qk-norm-tied": parallel_attention(
            "stablelm-parallel-bias-qk-norm-tied", 302
        ),
        # Router replicated, experts split by column within each expert, a shared expert.
        "qwen2-moe-shared-expert": mixture_of_experts(303),
        # Full-width q/k norms reduce over the heads that the model axis splits.
        "olmo2": olmo("olmo2", 301),
    }


# ---------------------------------------------------------------------------------------------
# The subprocess: python tests/test_sharding.py REQUEST.json RESULT.json


def _local_size(array, dimension: int) -> int:
    """The size of ``dimension`` in one device's shard."""
    return array.addressable_shards[0].data.shape[dimension]


def _worker(request_path: str, result_path: str) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", 4)
    from functools import partial

    from jaxmap.batching import plan_batches
    from jaxmap.engine import compilation_count, load_model, score_tokens
    from jaxmap.kernels.fused_logprob import sharded_token_logprobs
    from jaxmap.sharding import make_mesh
    from jaxmap.texts import TextSet
    from jaxmap.tokenization import tokenize

    request = json.loads(Path(request_path).read_text())
    texts = TextSet.from_texts(request["texts"])
    result = {"devices": len(jax.devices()), "models": {}, "kernel": {}, "argmax": {}, "conditional": {}}
    for name, directory in request["models"].items():
        runs = {}
        for spec in ["data=1", *request["meshes"]]:
            model = load_model(directory, mesh=spec)
            tokens = tokenize(texts, model.tokenizer, "full")
            scores = score_tokens(
                model, tokens, request["batch_tokens"], progress=False, packing="buckets"
            )
            layers = model.params["layers"]
            unembedding = model.params["embed" if model.config.tie_embeddings else "unembed"]
            plan = plan_batches(
                scores.ntokens, request["batch_tokens"], max_length=model.config.max_positions - 1
            )
            runs[spec] = {
                "loglik": scores.loglik.tolist(),
                "batching": scores.stats["batching"],
                "devices": len(model.mesh.devices.flat),
                "compilations": scores.stats["compilations"],
                "batch_rows": sorted({batch.rows for batch in plan.batches}),
                "unembedding_rows": [unembedding.shape[0], _local_size(unembedding, 0)],
                "columns": {
                    part: [layers[part]["kernel"].shape[-1], _local_size(layers[part]["kernel"], -1)]
                    for part in ("q", "k", "v", "up")
                },
                "rows": {
                    part: [layers[part]["kernel"].shape[-2], _local_size(layers[part]["kernel"], -2)]
                    for part in ("o", "down")
                },
                # Mixture of experts: [L, E, D, I] gate kernels, split by column.
                "expert_columns": [
                    layers["experts"]["gate"].shape[-1], _local_size(layers["experts"]["gate"], -1)
                ] if "experts" in layers else None,
            }
        # The same placement on an equal mesh built anew reuses the compiled scorers.
        before = compilation_count()
        model = load_model(directory, mesh=request["meshes"][0])
        score_tokens(
            model, tokenize(texts, model.tokenizer, "full"), request["batch_tokens"], progress=False,
            packing="buckets",
        )
        runs["recompilations"] = compilation_count() - before
        if not result["conditional"]:
            # Conditional texts on every mesh: only the continuations summed, and the argmax
            # combined across vocabulary shards (is_greedy).
            pairs = TextSet.from_pairs(*zip(*CONDITIONAL_PAIRS))
            for spec in ["data=1", *request["meshes"]]:
                model = load_model(directory, mesh=spec)
                scores = score_tokens(
                    model, tokenize(pairs, model.tokenizer, "full"), request["batch_tokens"],
                    progress=False,
                )
                result["conditional"][spec] = {
                    "loglik": scores.loglik.tolist(), "is_greedy": scores.is_greedy.tolist(),
                    "ntokens": scores.ntokens.tolist(),
                }
        result["models"][name] = runs

    keys = jax.random.split(jax.random.key(7), 3)
    hidden = jax.random.normal(keys[0], (36, 24)) * 2
    unembedding = jax.random.normal(keys[1], (780, 24))
    targets = jax.random.randint(keys[2], (36,), 0, 777)
    for spec in request["meshes"]:
        for tile in (1, 64):
            for softcap in (None, 5.0):
                kernel = partial(
                    sharded_token_logprobs,
                    mesh=make_mesh(spec), vocab_size=777, tile=tile, softcap=softcap,
                )
                # The 3 rows past the vocabulary are random, not zero: only masking hides them.
                got = jax.jit(kernel)(
                    np.asarray(hidden), np.asarray(unembedding), np.asarray(targets)
                )
                result["kernel"][f"{spec} tile={tile} softcap={softcap}"] = np.asarray(got).tolist()
        # Rows 5 and 400 (on different shards of either mesh) tie as hidden row 0's largest
        # logit: the lower index must win.
        tied = np.asarray(unembedding).copy()
        tied[5] = tied[400] = 3 * np.asarray(hidden[0])
        _, best = jax.jit(partial(
            sharded_token_logprobs, mesh=make_mesh(spec), vocab_size=777, tile=64, with_argmax=True
        ))(np.asarray(hidden), tied, np.asarray(targets))
        result["argmax"][spec] = np.asarray(best).tolist()
    result["argmax_unembedding_tie"] = [5, 400]
    result["kernel_inputs"] = {
        "hidden": np.asarray(hidden).tolist(),
        "unembedding": np.asarray(unembedding[:777]).tolist(),
        "targets": np.asarray(targets).tolist(),
    }
    Path(result_path).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The tests


class ShardedRun:
    """The cases' random models, built here (torch), and the 4-device subprocess scoring them;
    it writes its output to a log beside its result."""

    def __init__(self, root: Path) -> None:
        from conftest import save_random_model

        self.models, self.configs = {}, {}
        for seed, (name, (make_config, options, vocab)) in enumerate(sharded_cases().items()):
            config = make_config()
            config.vocab_size = vocab
            directory = save_random_model(
                root / name, config, seed=100 + seed, adds_bos=options.get("adds_bos", True),
                norm_center=options.get("norm_center", 1.0),
            )
            self.models[name] = str(directory)
            self.configs[name] = json.loads((directory / "config.json").read_text())
        request = root / "request.json"
        request.write_text(json.dumps({
            "models": self.models, "texts": SHARDED_TEXTS, "meshes": MESHES,
            "batch_tokens": BATCH_TOKENS,
        }))
        self.result_path, self.log = root / "result.json", root / "worker.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, str(request), str(self.result_path)],
                stdout=log, stderr=subprocess.STDOUT,
            )

    def result(self) -> dict:
        returncode = self.process.wait()
        assert returncode == 0, (
            f"the sharded worker exited with {returncode}:\n{self.log.read_text()[-5000:]}"
        )
        return json.loads(self.result_path.read_text())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_early(config: pytest.Config, root: Path) -> None:
    """Start the run as the session starts (tests/conftest.py), so that the subprocess, one
    core's work for a minute, runs beside the tests before this file's instead of before its
    own."""
    config.stash[_EARLY] = ShardedRun(root)


def stop_early(config: pytest.Config) -> None:
    """Kill the early run if it is still going (its tests did not run)."""
    run = config.stash.get(_EARLY, None)
    if run is not None:
        run.stop()


_EARLY = pytest.StashKey[ShardedRun]()


@pytest.fixture(scope="module")
def sharded_run(request, tmp_path_factory):
    """The subprocess's result, the models' configs, and transformers' references for them
    (computed here while the subprocess runs, if it still does)."""
    from conftest import reference_loglik

    run = request.config.stash.get(_EARLY, None) or ShardedRun(tmp_path_factory.mktemp("sharded"))
    try:
        references = {
            name: reference_loglik(Path(directory), SHARDED_TEXTS, "full")[0]
            for name, directory in run.models.items()
        }
        return run.result(), run.configs, references
    finally:
        run.stop()


def test_every_port_matches_single_device_on_both_meshes(sharded_run):
    result, configs, references = sharded_run
    assert result["devices"] == 4
    assert set(result["models"]) == set(sharded_cases())
    report = []
    for name, runs in result["models"].items():
        single = np.array(runs["data=1"]["loglik"])
        assert runs["data=1"]["devices"] == 1
        assert all(runs[spec]["batching"].startswith("buckets") for spec in ("data=1", *MESHES))
        # The single-device result itself is right (parity with transformers).
        assert np.abs(single - references[name]).max() <= 1e-3, name
        for spec in MESHES:
            assert runs[spec]["devices"] == 4
            difference = np.abs(np.array(runs[spec]["loglik"]) - single).max()
            report.append(f"{name} {spec}: max |delta| = {difference:.2e} nats")
            assert difference <= TOLERANCE, report[-1]
        assert runs["recompilations"] == 0, name
    print("\n".join(report))


def test_batches_with_odd_row_counts_are_padded_for_the_data_axis(sharded_run):
    result, _, _ = sharded_run
    rows = {row for runs in result["models"].values() for row in runs["data=2,model=2"]["batch_rows"]}
    assert any(row % 2 for row in rows), "the texts should give a batch of an odd row count"


def test_weights_are_split_where_heads_columns_and_vocabulary_allow(sharded_run):
    result, configs, _ = sharded_run
    for name, runs in result["models"].items():
        config = configs[name]
        heads = config.get("num_attention_heads", config.get("n_head"))
        kv_heads = config.get("num_key_value_heads", heads)
        mlp = (
            config.get("intermediate_size") or config.get("n_inner") or config.get("ffn_hidden_size")
            or 4 * config["n_embd"]
        )
        for spec in MESHES:
            shards = 4 if spec.endswith("model=4") else 2
            run = runs[spec]
            rows, local_rows = run["unembedding_rows"]
            assert rows == -(-config["vocab_size"] // shards) * shards, (name, spec)
            assert local_rows * shards == rows, (name, spec)
            expected = {"q": heads, "k": kv_heads, "v": kv_heads, "up": mlp, "o": heads, "down": mlp}
            for part, (width, local) in {**run["columns"], **run["rows"]}.items():
                divides = expected[part] % shards == 0
                assert local == (width // shards if divides else width), (name, spec, part)
            if run["expert_columns"]:
                width, local = run["expert_columns"]
                assert local * shards == width, (name, spec, "experts")
    assert any(runs["data=1,model=4"]["expert_columns"] for runs in result["models"].values())
    # The cases do exercise both: replicated kv heads (MQA, GQA 2 on 4) and split ones.
    model4 = [runs["data=1,model=4"]["columns"]["k"] for runs in result["models"].values()]
    assert any(local == width for width, local in model4)
    assert any(local < width for width, local in model4)


def test_sharded_kernel_matches_full_softmax_with_padded_vocabulary(sharded_run):
    from test_kernels import reference_logprobs

    result, _, _ = sharded_run
    inputs = result["kernel_inputs"]
    hidden, unembedding = np.array(inputs["hidden"]), np.array(inputs["unembedding"])
    targets = np.array(inputs["targets"])
    assert len(result["kernel"]) == 2 * len(MESHES) * 2
    for key, got in result["kernel"].items():
        softcap = None if key.endswith("None") else float(key.rsplit("=", 1)[1])
        expected = reference_logprobs(hidden, unembedding, targets, softcap)
        np.testing.assert_allclose(np.array(got), expected, atol=2e-4, rtol=1e-5, err_msg=key)


def test_sharded_argmax_takes_the_lowest_index_among_tied_shards(sharded_run):
    result, _, _ = sharded_run
    inputs = result["kernel_inputs"]
    unembedding = np.array(inputs["unembedding"])
    low, high = result["argmax_unembedding_tie"]
    hidden = np.array(inputs["hidden"])
    unembedding[low] = unembedding[high] = 3 * hidden[0]
    logits = hidden @ unembedding.T
    expected = logits.argmax(axis=1)  # numpy: the first among ties
    assert expected[0] == low
    assert len(result["argmax"]) == len(MESHES)
    for spec, got in result["argmax"].items():
        np.testing.assert_array_equal(got, expected, err_msg=spec)


def test_conditional_scores_and_greedy_flags_match_single_device(sharded_run):
    result, _, _ = sharded_run
    single = result["conditional"]["data=1"]
    assert min(single["ntokens"]) > 0
    for spec in MESHES:
        got = result["conditional"][spec]
        assert np.abs(np.array(got["loglik"]) - single["loglik"]).max() <= TOLERANCE, spec
        assert got["is_greedy"] == single["is_greedy"] and got["ntokens"] == single["ntokens"], spec


def test_mesh_specs():
    from jaxmap.sharding import parse_mesh

    assert parse_mesh("data=2,model=4") == {"data": 2, "model": 4}
    assert parse_mesh(" model = 2 ") == {"model": 2}
    assert parse_mesh("") == {}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("data=2,tensor=2", "cannot read 'tensor=2'"),
        ("data=two", "cannot read 'data=two'"),
        ("data=1,data=1", "axis 'data' is given twice"),
        ("model=0", "axis 'model' must be at least 1"),
        ("data=1,model=2", "needs 2 devices, the run has 1"),
    ],
)
def test_bad_mesh_is_one_line_naming_the_problem(spec, message, tiny_models):
    from jaxmap.engine import load_model
    from jaxmap.errors import JaxmapError
    from jaxmap.sharding import MeshError

    with pytest.raises(MeshError, match=message) as caught:
        load_model(str(tiny_models[0]), mesh=spec)
    assert isinstance(caught.value, (JaxmapError, ValueError))
    assert "\n" not in str(caught.value) and spec in str(caught.value)


def test_default_mesh_puts_every_device_on_the_data_axis():
    import jax

    from jaxmap.sharding import make_mesh

    mesh = make_mesh()
    assert dict(mesh.shape) == {"data": len(jax.devices()), "model": 1}
    assert make_mesh(mesh) is mesh


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
