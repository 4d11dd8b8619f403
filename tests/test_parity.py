"""Parity with transformers (PyTorch, CPU, float32) on small random models: max |Δ per-text
log-likelihood| ≤ 1e-3 nats, for every architecture and the variants that change the maths."""

from __future__ import annotations

import numpy as np
import pytest
import transformers

import jaxmap

from conftest import TEXTS, reference_loglik, save_random_model

TOLERANCE = 1e-3
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=300)


def llama(**overrides):
    return transformers.LlamaConfig(**{**SMALL, "num_attention_heads": 4, "max_position_embeddings": 256, **overrides})


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

CASES = {
    "llama-mha-untied": (lambda: llama(num_key_value_heads=4), {}),
    "llama-gqa-tied": (lambda: llama(num_key_value_heads=2, tie_word_embeddings=True), {}),
    "llama-mqa": (lambda: llama(num_key_value_heads=1), {}),
    "llama-llama3-rope": (lambda: llama(num_key_value_heads=2, rope_parameters=LLAMA3_ROPE), {}),
    "llama-linear-rope": (
        lambda: llama(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
        {},
    ),
    "llama-short-context": (lambda: llama(num_key_value_heads=2, max_position_embeddings=24), {}),
    "llama-paper-policy": (lambda: llama(num_key_value_heads=2), {"policy": "paper"}),
    "mistral-sliding-window": (
        lambda: transformers.MistralConfig(
            **SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            sliding_window=7, max_position_embeddings=256,
        ),
        {},
    ),
    "qwen2-qkv-bias": (
        lambda: transformers.Qwen2Config(
            **SMALL, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=True,
        ),
        {"adds_bos": False},
    ),
    "qwen2-paper-no-bos": (
        lambda: transformers.Qwen2Config(
            **SMALL, num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256
        ),
        {"adds_bos": False, "policy": "paper"},
    ),
    "neox-parallel-partial-rotary": (
        lambda: transformers.GPTNeoXConfig(
            **SMALL, num_attention_heads=4, max_position_embeddings=256,
            use_parallel_residual=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        ),
        {"adds_bos": False},
    ),
    "neox-sequential": (
        lambda: transformers.GPTNeoXConfig(
            **SMALL, num_attention_heads=4, max_position_embeddings=30,
            use_parallel_residual=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        ),
        {"adds_bos": False},
    ),
    "gpt2": (
        lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=40, vocab_size=300),
        {"adds_bos": False},
    ),
    "gpt2-paper-policy": (
        lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=300),
        {"adds_bos": False, "policy": "paper"},
    ),
    "gemma3": (
        lambda: transformers.Gemma3TextConfig(
            **SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            query_pre_attn_scalar=24, sliding_window=6, max_position_embeddings=256,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0},
            },
        ),
        {"norm_center": 0.0},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(case, tmp_path, text_file):
    make_config, options = CASES[case]
    policy = options.get("policy", "full")
    directory = save_random_model(
        tmp_path / "model",
        make_config(),
        seed=len(case),
        adds_bos=options.get("adds_bos", True),
        norm_center=options.get("norm_center", 1.0),
    )
    expected, expected_counts = reference_loglik(directory, TEXTS, policy)
    store = jaxmap.score(
        [str(directory)], text_file, out=tmp_path / "store.h5", bos_policy=policy,
        batch_tokens=128, progress=False,
    )
    got = store.loglik[0]
    np.testing.assert_array_equal(store.ntokens[0], expected_counts)
    assert np.abs(got - expected).max() <= TOLERANCE, (got, expected)
    print(f"{case}: max |delta| = {np.abs(got - expected).max():.2e} nats")
    n_ctx = store.model_meta[0]["n_ctx"]
    if n_ctx < 50:
        assert store.truncated[0].any(), "short contexts must truncate some texts"
    assert (store.ntokens[0][store.truncated[0]] == n_ctx - 1).all()
    # The texts must exercise the model: most carry real, differing log-likelihoods.
    assert np.count_nonzero(expected) >= len(TEXTS) - 3
