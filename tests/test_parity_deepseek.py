"""Parity with transformers (PyTorch, CPU, float32) for DeepSeek-V2 and V3: multi-head latent
attention (direct and low-rank queries, interleaved and half rope, values narrower than the
query/key heads, YaRN's softmax scale) and their mixture of experts (shared experts, greedy,
group-limited greedy and V3's noaux_tc routing, dense first layers): max |delta per-text
log-likelihood| <= 1e-3 nats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

from jaxmap.models import translate_config

from conftest import TEXTS, randomize
from parity import case_hf_config, check_parity, check_refused, force_moe_dispatch

SMALL = dict(
    hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, vocab_size=300,
    max_position_embeddings=256, intermediate_size=88, moe_intermediate_size=24,
    kv_lora_rank=24, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=10,
)
YARN = {
    "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
    "mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32, "beta_slow": 1,
}


def v2_lite(**overrides):
    """V2-Lite's shape: queries straight from q_proj, greedy softmax routing."""
    return transformers.DeepseekV2Config(
        **{
            **SMALL, "q_lora_rank": None, "n_routed_experts": 6, "num_experts_per_tok": 2,
            "n_shared_experts": 2, "first_k_dense_replace": 1, "topk_method": "greedy", **overrides,
        }
    )


def v2(**overrides):
    """V2's: low-rank queries, group-limited greedy routing, YaRN, attention biases."""
    return transformers.DeepseekV2Config(
        **{
            **SMALL, "q_lora_rank": 20, "n_routed_experts": 8, "num_experts_per_tok": 3,
            "n_shared_experts": 1, "first_k_dense_replace": 0, "topk_method": "group_limited_greedy",
            "n_group": 4, "topk_group": 2, "routed_scaling_factor": 1.5, "attention_bias": True,
            "rope_parameters": YARN, **overrides,
        }
    )


def v3(**overrides):
    """V3's: noaux_tc sigmoid routing with a correction bias, dense first layers."""
    return transformers.DeepseekV3Config(
        **{
            **SMALL, "q_lora_rank": 20, "n_routed_experts": 8, "num_experts_per_tok": 2,
            "n_shared_experts": 1, "first_k_dense_replace": 2, "n_group": 4, "topk_group": 2,
            "routed_scaling_factor": 2.5, "norm_topk_prob": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, **overrides,
        }
    )


# Where the tokenizer adds no BOS the two BOS policies score different tokens: that case is
# checked under both.
CASES = {
    "deepseek-v2-lite": (lambda: v2_lite(), {}),
    "deepseek-v2-grouped-yarn-paper": (lambda: v2(), {"adds_bos": False, "policy": "paper"}),
    "deepseek-v3-noaux-tc": (lambda: v3(), {}),
    "deepseek-v3-half-rope-paper": (
        lambda: v3(rope_interleave=False, first_k_dense_replace=1, norm_topk_prob=False),
        {"policy": "paper"},
    ),
}
ARCHITECTURES = {"deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}
# A few texts (empty, short, non-ASCII, code, long enough to pack several into a row): fewer
# row shapes to compile than conftest's full set, which test_parity_moe already runs.
FEW_TEXTS = [TEXTS[i] for i in (0, 1, 3, 4, 5, 8)]


@pytest.fixture
def few_texts(tmp_path) -> Path:
    path = tmp_path / "texts.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"t{i}", "text": text}) + "\n" for i, text in enumerate(FEW_TEXTS)),
        encoding="utf-8",
    )
    return path


def randomize_correction_bias(model, seed: int, norm_center: float = 1.0) -> None:
    """conftest.randomize, then V3's e_score_correction_bias (a buffer that transformers
    initialises to zeros and randomize leaves alone) drawn as large as the sigmoid scores'
    spread, so that it changes the routing."""
    import torch

    randomize(model, seed, norm_center)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.3 * torch.randn(buffer.shape, generator=generator))


@pytest.fixture(autouse=True)
def random_correction_bias(monkeypatch):
    import conftest

    monkeypatch.setattr(conftest, "randomize", randomize_correction_bias)


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(case, tmp_path, few_texts, monkeypatch):
    """Every case, the dense expert dispatch forced (what decoder.choose_moe_dispatch picks at
    these sizes anyway)."""
    options = CASES[case][1]
    policies = ("full", "paper") if options.get("adds_bos") is False else (options.get("policy", "full"),)
    checked = _check(case, "dense", policies, tmp_path, few_texts, monkeypatch)
    saved = load_file(checked[0].directory / "model.safetensors")
    biases = [name for name in saved if name.endswith("e_score_correction_bias")]
    assert bool(biases) == case.startswith("deepseek-v3")
    assert all(np.abs(saved[name]).max() > 0.1 for name in biases)


def test_grouped_dispatch_matches_transformers(tmp_path, few_texts, monkeypatch):
    """V3's routing (groups, correction bias, dense first layers) with the grouped (sort and
    segment) expert dispatch forced; test_dispatches_agree holds every case's two dispatches
    to each other."""
    _check("deepseek-v3-noaux-tc", "grouped", ("full",), tmp_path, few_texts, monkeypatch)


def _check(case, dispatch, policies, tmp_path, few_texts, monkeypatch):
    import jax

    calls = force_moe_dispatch(dispatch, monkeypatch)
    try:
        checked = check_parity(
            case, CASES[case], tmp_path, few_texts, texts=FEW_TEXTS, policies=policies, batch_tokens=512
        )
    finally:
        jax.clear_caches()
    assert calls
    return checked


@pytest.mark.parametrize("case", sorted(CASES))
def test_dispatches_agree(case):
    """The dense and the grouped dispatch give the same expert outputs under every case's
    routing (random experts; 300 tokens, so that experts get more than a tile's worth)."""
    import jax.numpy as jnp

    from jaxmap.models import decoder

    router, config = _router(case)
    rng = np.random.default_rng(len(case))
    shape = (config.num_experts, config.hidden_size, config.expert_intermediate_size)
    experts = {
        "gate": rng.standard_normal(shape, np.float32) * 0.2,
        "up": rng.standard_normal(shape, np.float32) * 0.2,
        "down": np.swapaxes(rng.standard_normal(shape, np.float32), 1, 2) * 0.2,
    }
    layer = {"router": _router_params(router, config), "experts": {k: jnp.asarray(v) for k, v in experts.items()}}
    x = jnp.asarray(rng.standard_normal((3, 100, config.hidden_size), np.float32))
    dense = np.asarray(decoder._dense_experts(x, layer, config))
    grouped = np.asarray(decoder._grouped_experts(x, layer, config))
    np.testing.assert_allclose(grouped, dense, rtol=1e-5, atol=1e-5)


def _router(case: str):
    """transformers' router of a case's config with random weights (and correction bias), and
    the case's DecoderConfig."""
    import torch

    config = CASES[case][0]()
    hf_config = {**config.to_dict(), "architectures": [ARCHITECTURES[config.model_type]]}
    _, decoder_config = translate_config(hf_config, "tiny")
    module = transformers.models.deepseek_v2.modeling_deepseek_v2
    if config.model_type == "deepseek_v3":
        module = transformers.models.deepseek_v3.modeling_deepseek_v3
    router = getattr(module, f"{type(config).__name__[:-6]}TopkRouter")(config)
    generator = torch.Generator().manual_seed(len(case))
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=generator))
        if hasattr(router, "e_score_correction_bias"):
            router.e_score_correction_bias.copy_(0.3 * torch.randn(router.num_experts, generator=generator))
    return router, decoder_config


def _router_params(router, config) -> dict:
    """The decoder's router params of transformers' ``router``."""
    import jax.numpy as jnp

    params = {"kernel": jnp.asarray(router.weight.detach().numpy().T)}
    if config.router_choice_bias:
        params["choice_bias"] = jnp.asarray(router.e_score_correction_bias.numpy())
    return params


@pytest.mark.parametrize("case", sorted(CASES))
def test_routing_matches_transformers_router(case):
    """Over many tokens, each expert's weight per token equals transformers' router's (top-k,
    groups, correction bias, renormalisation and routed_scaling_factor); and the groups and the
    bias matter: plain top-k would route some tokens elsewhere."""
    import dataclasses

    import jax.numpy as jnp
    import torch

    from jaxmap.models.decoder import expert_weights

    router, config = _router(case)
    x = torch.randn(512, config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, weights, chosen = router(x)
    expected = torch.zeros(512, config.num_experts).scatter(1, chosen, weights).numpy()
    params = _router_params(router, config)
    got = np.asarray(expert_weights(jnp.asarray(x.numpy()), params, config))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    if config.expert_groups or config.router_choice_bias:
        plain = dataclasses.replace(config, expert_groups=0, router_choice_bias=False)
        assert ((np.asarray(expert_weights(jnp.asarray(x.numpy()), params, plain)) > 0) != (got > 0)).any()


REFUSED = {
    "v2-kv-heads": ("deepseek-v2-lite", "DeepseekV2ForCausalLM", "num_key_value_heads", 2),
    "v2-wide-values": ("deepseek-v2-lite", "DeepseekV2ForCausalLM", "v_head_dim", 21),
    "v2-topk-method": ("deepseek-v2-lite", "DeepseekV2ForCausalLM", "topk_method", "noaux_tc"),
    "v2-norm-topk": ("deepseek-v2-lite", "DeepseekV2ForCausalLM", "norm_topk_prob", True),
    "v2-scoring": ("deepseek-v2-lite", "DeepseekV2ForCausalLM", "scoring_func", "sigmoid"),
    "v2-mlp-bias": ("deepseek-v2-lite", "DeepseekV2ForCausalLM", "mlp_bias", True),
    "v2-moe-layer-freq": ("deepseek-v2-lite", "DeepseekV2ForCausalLM", "moe_layer_freq", 2),
    "v2-all-dense": ("deepseek-v2-lite", "DeepseekV2ForCausalLM", "first_k_dense_replace", 3),
    "v2-groups-indivisible": ("deepseek-v2-grouped-yarn-paper", "DeepseekV2ForCausalLM", "n_group", 3),
    "v2-too-few-groups": ("deepseek-v2-grouped-yarn-paper", "DeepseekV2ForCausalLM", "topk_group", 1),
    "v2-partial-rope": (
        "deepseek-v2-grouped-yarn-paper", "DeepseekV2ForCausalLM", "rope_parameters.partial_rotary_factor", 0.5
    ),
    "v3-topk-method": ("deepseek-v3-noaux-tc", "DeepseekV3ForCausalLM", "topk_method", "group_limited_greedy"),
    "v3-scoring": ("deepseek-v3-noaux-tc", "DeepseekV3ForCausalLM", "scoring_func", "softmax"),
    "v3-singleton-groups": ("deepseek-v3-noaux-tc", "DeepseekV3ForCausalLM", "n_group", 8),
    "v3-activation": ("deepseek-v3-noaux-tc", "DeepseekV3ForCausalLM", "hidden_act", "mish"),
    "v3-no-shared-experts": ("deepseek-v3-noaux-tc", "DeepseekV3ForCausalLM", "n_shared_experts", 0),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refuses_unsupported_fields_by_name(case):
    check_refused(CASES, REFUSED[case])


def test_training_only_and_remote_code_fields_are_neutral():
    hf_config = case_hf_config(CASES, "deepseek-v3-noaux-tc", "DeepseekV3ForCausalLM")
    baseline = translate_config(hf_config, "tiny")
    changed = {
        **hf_config, "output_router_logits": True, "aux_loss_alpha": 0.01, "seq_aux": True,
        "ep_size": 8, "num_nextn_predict_layers": 1, "moe_layer_freq": 1, "head_dim": 99,
    }
    assert translate_config(changed, "tiny") == baseline


def test_yarn_scales_the_softmax_by_mscale_all_dim_squared():
    from transformers.modeling_rope_utils import yarn_apply_mscale

    hf_config = case_hf_config(CASES, "deepseek-v2-grouped-yarn-paper", "DeepseekV2ForCausalLM")
    config = translate_config(hf_config, "tiny")[1]
    expected = yarn_apply_mscale(YARN, 20**-0.5)
    assert expected != pytest.approx(20**-0.5)
    assert config.attn_scale == pytest.approx(expected, rel=1e-12)


@pytest.fixture(scope="module")
def v3_model(tmp_path_factory):
    """A saved random V3 model (dense first layers, low-rank queries, values narrower than the
    query/key heads), loaded."""
    from conftest import save_random_model
    from jaxmap.engine import load_model

    directory = save_random_model(tmp_path_factory.mktemp("v3") / "model", v3(), seed=4)
    return directory, load_model(str(directory))


@pytest.mark.parametrize("attention", ["blockwise", "xla_fused", "pallas"])
def test_every_attention_path_matches_the_dense_one(attention, v3_model):
    """Latent attention's values (zero-padded to the query/key width) go through every path,
    packed rows included."""
    import dataclasses

    import jax.numpy as jnp

    from jaxmap.models import hidden_states

    _, model = v3_model
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 40)), jnp.int32)
    segments = jnp.asarray(np.repeat([[0] * 25 + [1] * 15], 2, axis=0), jnp.int32)
    positions = jnp.concatenate([jnp.arange(25), jnp.arange(15)])[None].astype(jnp.int32)
    for packed in ({}, {"segment_ids": segments, "positions": positions}):
        expected, _ = hidden_states(model.params, tokens, dataclasses.replace(model.config, attention="dense"), **packed)
        got, _ = hidden_states(model.params, tokens, dataclasses.replace(model.config, attention=attention), **packed)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-4)


def test_cached_decode_logits_equal_the_full_forward(v3_model):
    """The decode path (a key/value cache, both layer stacks) gives the scoring forward's
    logits."""
    import jax.numpy as jnp

    from jaxmap.models.generation import cached_logits
    from test_generation import full_logits

    _, model = v3_model
    tokens = np.random.default_rng(1).integers(0, model.config.vocab_size, (2, 12))
    got = np.asarray(cached_logits(model.params, jnp.asarray(tokens, jnp.int32), model.config, prompt_length=3))
    expected = full_logits(model.params, tokens, model.config)
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))


def test_multi_token_prediction_layers_are_left_out(v3_model, tmp_path):
    """V3 checkpoints carry their multi-token prediction layer after the last layer;
    transformers never runs it, and neither does jaxmap (other unread tensors are refused)."""
    import shutil

    from safetensors.numpy import save_file

    from jaxmap.engine import load_model
    from jaxmap.errors import UnsupportedModelError

    directory, _ = v3_model
    copy = shutil.copytree(directory, tmp_path / "model")
    tensors = load_file(copy / "model.safetensors")
    extra = {"model.layers.3.eh_proj.weight": np.ones((64, 128), np.float32)}
    save_file({**tensors, **extra}, copy / "model.safetensors", metadata={"format": "pt"})
    load_model(str(copy))
    save_file({**tensors, "model.layers.0.self_attn.extra.weight": np.ones(2, np.float32)}, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UnsupportedModelError, match="extra"):
        load_model(str(copy))


@pytest.mark.parametrize("case", sorted(CASES))
def test_planned_parameters_are_transformers_own(case):
    """The job planner's parameter count (from the params layout) is transformers' own, plus
    V3's router correction biases, which transformers keeps as buffers."""
    from jaxmap.planning import parameter_count

    config = CASES[case][0]()
    model = transformers.AutoModelForCausalLM.from_config(config)
    expected = sum(p.numel() for name, p in model.named_parameters() if not name.endswith("bias"))
    expected += sum(b.numel() for name, b in model.named_buffers() if name.endswith("e_score_correction_bias"))
    hf_config = {**config.to_dict(), "architectures": [ARCHITECTURES[config.model_type]]}
    assert parameter_count(translate_config(hf_config, "tiny")[1]) == expected
