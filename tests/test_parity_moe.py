"""Parity with transformers (PyTorch, CPU, float32) for the mixture-of-experts ports (Mixtral,
Qwen3-MoE, Qwen2-MoE): max |delta per-text log-likelihood| <= 1e-3 nats, with routing that
really differs between tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers

from jaxmap.engine import load_model
from jaxmap.errors import UnsupportedModelError

from conftest import TEXTS, save_random_model
from parity import case_hf_config, check_parity, check_refused, force_moe_dispatch, save_case, score

SMALL = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=300, max_position_embeddings=256,
)


def mixtral(**overrides):
    return transformers.MixtralConfig(
        **{**SMALL, "intermediate_size": 48, "num_local_experts": 4, "num_experts_per_tok": 2, **overrides}
    )


def qwen3_moe(**overrides):
    return transformers.Qwen3MoeConfig(
        **{
            **SMALL, "head_dim": 16, "intermediate_size": 96, "moe_intermediate_size": 40,
            "num_experts": 4, "num_experts_per_tok": 2, **overrides,
        }
    )


def qwen2_moe(**overrides):
    return transformers.Qwen2MoeConfig(
        **{
            **SMALL, "intermediate_size": 96, "moe_intermediate_size": 40,
            "shared_expert_intermediate_size": 56, "num_experts": 4, "num_experts_per_tok": 2,
            **overrides,
        }
    )


# Both BOS policies, top-k renormalised (Mixtral always, Qwen by norm_topk_prob) and not, a
# shared expert; more experts than active in every case.
CASES = {
    "mixtral-top2-of-4": (lambda: mixtral(), {}),
    "qwen3-moe-norm-topk": (lambda: qwen3_moe(norm_topk_prob=True), {"adds_bos": False}),
    "qwen3-moe-no-norm-topk-paper": (
        lambda: qwen3_moe(norm_topk_prob=False, tie_word_embeddings=True),
        {"adds_bos": False, "policy": "paper"},
    ),
    "qwen2-moe-shared-expert-paper": (
        lambda: qwen2_moe(num_experts=5, num_experts_per_tok=3), {"adds_bos": False, "policy": "paper"}
    ),
}


def chosen_expert_sets(directory, texts: list[str]) -> dict[int, set[tuple[int, ...]]]:
    """Per layer, the distinct sets of experts transformers' routers pick over the texts' tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    top_k = model.config.num_experts_per_tok
    chosen: dict[int, set[tuple[int, ...]]] = {}
    for text in texts:
        ids = tokenizer.encode(text)
        if not ids:
            continue
        with torch.no_grad():
            outputs = model(torch.tensor([ids]), output_router_logits=True)
        for layer, logits in enumerate(outputs.router_logits):
            picks = torch.topk(torch.softmax(logits.float(), -1), top_k, dim=-1).indices
            chosen.setdefault(layer, set()).update(tuple(sorted(row)) for row in picks.tolist())
    return chosen


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(case, tmp_path, text_file):
    (parity,) = check_parity(case, CASES[case], tmp_path, text_file)
    directory = parity.directory
    # The random routers are sharp enough that tokens go to different experts in every layer.
    config = json.loads((directory / "config.json").read_text())
    experts = config.get("num_local_experts") or config["num_experts"]
    for layer, sets in chosen_expert_sets(directory, TEXTS).items():
        assert len(sets) > 1, (layer, sets)
        assert len({e for chosen in sets for e in chosen}) == experts, (layer, sets)


def test_stacked_expert_layout_scores_the_same(tmp_path, text_file):
    """transformers 5's in-memory layout (experts.gate_up_proj [E, 2I, D], experts.down_proj
    [E, D, I], Mixtral's router under mlp.) is read as well as the per-expert hub layout."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    for case in ("mixtral-top2-of-4", "qwen2-moe-shared-expert-paper"):
        directory = save_case(case, CASES[case], tmp_path / case, seed=3)
        hub_layout = score(directory, text_file, tmp_path / f"{case}-hub.h5", "full").loglik[0]
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        assert any(name.endswith("experts.gate_up_proj") for name in state)
        (directory / "model.safetensors").unlink()
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
        stacked = score(directory, text_file, tmp_path / f"{case}-stacked.h5", "full").loglik[0]
        np.testing.assert_allclose(stacked, hub_layout, rtol=0, atol=1e-5)


def test_top_k_breaks_ties_by_the_lowest_index():
    """What expert_weights' docstring promises of lax.top_k (torch.topk promises no order)."""
    import jax

    probabilities = np.array([[0.25, 0.25, 0.25, 0.25], [0.1, 0.3, 0.3, 0.3], [0.2, 0.2, 0.4, 0.2]])
    _, chosen = jax.lax.top_k(probabilities.astype(np.float32), 2)
    np.testing.assert_array_equal(np.asarray(chosen), [[0, 1], [1, 2], [2, 0]])


def test_equal_router_rows_are_refused(tmp_path):
    """An all-zero (untrained) router ties every token; transformers breaks those ties in an
    unspecified order, so the checkpoint is refused by tensor name."""
    from safetensors.numpy import load_file, save_file

    directory = save_random_model(tmp_path / "model", mixtral(), seed=1)
    tensors = load_file(directory / "model.safetensors")
    name = "model.layers.1.block_sparse_moe.gate.weight"
    tensors[name] = np.zeros_like(tensors[name])
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UnsupportedModelError, match=name.replace(".", r"\.")):
        load_model(str(directory))


def test_router_stays_float32_in_bfloat16_models(tmp_path):
    import jax.numpy as jnp

    directory = save_random_model(tmp_path / "model", qwen2_moe(), seed=2, adds_bos=False)
    layers = load_model(str(directory), dtype="bfloat16").params["layers"]
    assert layers["router"]["kernel"].dtype == jnp.float32
    assert layers["router"]["kernel"].shape == (2, 64, 4)
    assert layers["experts"]["gate"].dtype == jnp.bfloat16
    assert layers["experts"]["gate"].shape == (2, 4, 64, 40)
    assert layers["experts"]["down"].shape == (2, 4, 40, 64)
    assert layers["shared_gate"]["kernel"].shape == (2, 64, 1)


def test_expert_weights_keep_top_k_and_renormalise():
    import jax.numpy as jnp

    from jaxmap.models.decoder import expert_weights
    from jaxmap.models import translate_config

    hf_config = {**qwen3_moe().to_dict(), "architectures": ["Qwen3MoeForCausalLM"]}
    logits = np.array([[2.0, 0.0, 1.0, -1.0]], np.float32)
    router = {"kernel": jnp.eye(4, dtype=jnp.float32)}
    softmax = np.exp(logits) / np.exp(logits).sum()
    for normalize in (False, True):
        _, config = translate_config({**hf_config, "norm_topk_prob": normalize}, "tiny")
        got = np.asarray(expert_weights(jnp.asarray(logits), router, config))
        kept = softmax * np.array([1, 0, 1, 0])
        np.testing.assert_allclose(got, kept / kept.sum() if normalize else kept, rtol=1e-6)


REFUSED = {
    "mixtral-activation": ("mixtral-top2-of-4", "MixtralForCausalLM", "hidden_act", "mish"),
    "mixtral-expert-counts-disagree": ("mixtral-top2-of-4", "MixtralForCausalLM", "num_experts", 8),
    "mixtral-unknown": ("mixtral-top2-of-4", "MixtralForCausalLM", "moe_layer_freq", 2),
    "qwen3-moe-sparse-step": ("qwen3-moe-norm-topk", "Qwen3MoeForCausalLM", "decoder_sparse_step", 2),
    "qwen3-moe-dense-layers": ("qwen3-moe-norm-topk", "Qwen3MoeForCausalLM", "mlp_only_layers", [1]),
    "qwen3-moe-layer-types": (
        "qwen3-moe-norm-topk", "Qwen3MoeForCausalLM", "layer_types", ["sliding_attention"] * 2
    ),
    "qwen3-moe-no-experts": ("qwen3-moe-norm-topk", "Qwen3MoeForCausalLM", "num_local_experts", 0),
    "qwen2-moe-sliding": ("qwen2-moe-shared-expert-paper", "Qwen2MoeForCausalLM", "use_sliding_window", True),
    "qwen2-moe-layer-types": (
        "qwen2-moe-shared-expert-paper", "Qwen2MoeForCausalLM", "layer_types",
        ["sliding_attention", "full_attention"],
    ),
    "qwen2-moe-dense-layers": ("qwen2-moe-shared-expert-paper", "Qwen2MoeForCausalLM", "mlp_only_layers", [0]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refuses_unsupported_fields_by_name(case):
    check_refused(CASES, REFUSED[case])


def test_mixtral_sliding_window_applies_to_every_layer():
    from jaxmap.models import translate_config

    hf_config = {**mixtral(sliding_window=6).to_dict(), "architectures": ["MixtralForCausalLM"]}
    assert translate_config(hf_config, "tiny")[1].layer_window == (6, 6)
    hf_config["sliding_window"] = None
    assert translate_config(hf_config, "tiny")[1].layer_window == (0, 0)


def test_mixtral_rope_base_defaults_to_transformers_one():
    from jaxmap.models import translate_config

    hf_config = {**mixtral().to_dict(), "architectures": ["MixtralForCausalLM"]}
    explicit = translate_config(hf_config, "tiny")[1].rope_tables
    del hf_config["rope_parameters"]
    assert translate_config(hf_config, "tiny")[1].rope_tables == explicit
    assert transformers.MixtralConfig().rope_parameters["rope_theta"] == 1e6


def test_qwen3_moe_sliding_window_applies_to_every_layer():
    from jaxmap.models import translate_config

    hf_config = {
        **qwen3_moe(use_sliding_window=True, sliding_window=5).to_dict(),
        "architectures": ["Qwen3MoeForCausalLM"], "max_window_layers": 1,
    }
    assert translate_config(hf_config, "tiny")[1].layer_window == (5, 5)


@pytest.mark.parametrize(
    "case, architecture",
    [
        ("mixtral-top2-of-4", "MixtralForCausalLM"),
        ("qwen3-moe-norm-topk", "Qwen3MoeForCausalLM"),
        ("qwen2-moe-shared-expert-paper", "Qwen2MoeForCausalLM"),
    ],
)
def test_training_only_router_fields_are_neutral(case, architecture):
    from jaxmap.models import translate_config

    hf_config = case_hf_config(CASES, case, architecture)
    baseline = translate_config(hf_config, "tiny")
    changed = {
        **hf_config, "output_router_logits": True, "router_aux_loss_coef": 0.5,
        "router_jitter_noise": 0.1,
    }
    assert translate_config(changed, "tiny") == baseline


@pytest.mark.parametrize("dispatch", ["dense", "grouped"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_dispatch_matches_transformers(case, dispatch, tmp_path, text_file, monkeypatch):
    """The dense and the grouped expert dispatch, each forced whatever
    decoder.choose_moe_dispatch would pick, score within the same tolerance."""
    import jax

    calls = force_moe_dispatch(dispatch, monkeypatch)
    try:
        check_parity(case, CASES[case], tmp_path, text_file)
    finally:
        jax.clear_caches()
    assert calls
