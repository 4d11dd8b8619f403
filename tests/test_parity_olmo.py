"""Parity with transformers (PyTorch, CPU, float32) for OLMo and OLMo 2: max |delta per-text
log-likelihood| <= 1e-3 nats, with a clip_qkv small enough to bind on the random model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers

from parity import case_hf_config, check_parity, check_refused, score

SMALL = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    vocab_size=300, max_position_embeddings=256,
)

# The random model's q/k/v entries have a standard deviation near 1.5 (unit-variance inputs,
# weights of std 1.5 / sqrt(64)), so a clip at 1 changes many of them.
BINDING_CLIP = 1.0

CASES = {
    "olmo": (lambda: transformers.OlmoConfig(**SMALL, num_key_value_heads=4), {}),
    "olmo-clip-qkv-gqa-paper": (
        lambda: transformers.OlmoConfig(**SMALL, num_key_value_heads=2, clip_qkv=BINDING_CLIP),
        {"adds_bos": False, "policy": "paper"},
    ),
    "olmo2": (lambda: transformers.Olmo2Config(**SMALL, num_key_value_heads=4), {}),
    "olmo2-gqa-tied-paper": (
        lambda: transformers.Olmo2Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=True),
        {"adds_bos": False, "policy": "paper"},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(case, tmp_path, text_file):
    (parity,) = check_parity(case, CASES[case], tmp_path, text_file)
    config_path = parity.directory / "config.json"
    config = json.loads(config_path.read_text())
    if config.get("clip_qkv") is not None:
        # The clip binds: without it the same weights score differently.
        config_path.write_text(json.dumps({**config, "clip_qkv": None}))
        unclipped = score(parity.directory, text_file, tmp_path / "unclipped.h5", parity.policy)
        assert np.abs(unclipped.loglik[0] - parity.got).max() > 0.05


def test_olmo2_q_k_norms_span_the_whole_projection():
    from jaxmap.models import translate_config

    hf_config = case_hf_config(CASES, "olmo2", "Olmo2ForCausalLM")
    config = translate_config(hf_config, "tiny")[1]
    assert (config.qk_norm, config.qk_norm_scope, config.pre_norm, config.sandwich_norm) == (
        True, "full", False, True,
    )
    olmo = case_hf_config(CASES, "olmo", "OlmoForCausalLM")
    config = translate_config(olmo, "tiny")[1]
    assert (config.norm, config.norm_eps, config.qk_norm, config.pre_norm) == ("layer", 1e-5, False, True)


REFUSED = {
    "olmo-activation": ("olmo", "OlmoForCausalLM", "hidden_act", "mish"),
    "olmo-sliding-window": ("olmo", "OlmoForCausalLM", "sliding_window", 8),
    "olmo-rms-norm": ("olmo", "OlmoForCausalLM", "rms_norm_eps", 1e-6),
    "olmo2-clip": ("olmo2", "Olmo2ForCausalLM", "clip_qkv", 8.0),
    "olmo2-layer-types": ("olmo2", "Olmo2ForCausalLM", "layer_types", ["sliding_attention"] * 2),
    "olmo2-unknown": ("olmo2", "Olmo2ForCausalLM", "qk_layernorm", False),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refuses_unsupported_fields_by_name(case):
    check_refused(CASES, REFUSED[case])
