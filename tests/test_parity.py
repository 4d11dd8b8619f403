"""Parity with transformers (PyTorch, CPU, float32) on small random models: max |Δ per-text
log-likelihood| ≤ 1e-3 nats, for every architecture and the variants that change the maths."""

from __future__ import annotations

import pytest
import transformers

from parity import case_hf_config, check_parity, check_refused

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
    "gemma-mqa-legacy-gelu": (
        lambda: transformers.GemmaConfig(
            **SMALL, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
            hidden_act="gelu", max_position_embeddings=256,
        ),
        {"norm_center": 0.0},
    ),
    "gemma2-softcap-sliding": (
        lambda: transformers.Gemma2Config(
            **{**SMALL, "num_hidden_layers": 3}, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, query_pre_attn_scalar=24, sliding_window=5, max_position_embeddings=256,
            # Small caps so that tanh bends the random model's logits and scores.
            final_logit_softcapping=3.0, attn_logit_softcapping=2.0,
        ),
        {"norm_center": 0.0},
    ),
    "qwen3-qk-norm-sliding": (
        lambda: transformers.Qwen3Config(
            **SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=256, use_sliding_window=True, sliding_window=5,
            max_window_layers=1,
        ),
        {"adds_bos": False},
    ),
    "qwen3-tied-mqa": (
        lambda: transformers.Qwen3Config(
            **SMALL, num_attention_heads=4, num_key_value_heads=1, head_dim=24,
            max_position_embeddings=256, tie_word_embeddings=True,
        ),
        {"adds_bos": False},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(case, tmp_path, text_file):
    check_parity(case, CASES[case], tmp_path, text_file)


# Per new architecture: config fields that would change the maths in ways jaxmap lacks.
REFUSED = {
    "gemma-activation": ("gemma-mqa-legacy-gelu", "GemmaForCausalLM", "hidden_activation", "relu"),
    "gemma-bidirectional": ("gemma-mqa-legacy-gelu", "GemmaForCausalLM", "use_bidirectional_attention", True),
    "gemma-unknown": ("gemma-mqa-legacy-gelu", "GemmaForCausalLM", "attn_logit_softcapping", 50.0),
    "gemma2-layer-types": ("gemma2-softcap-sliding", "Gemma2ForCausalLM", "layer_types", ["chunked_attention"] * 3),
    "gemma2-unknown": ("gemma2-softcap-sliding", "Gemma2ForCausalLM", "final_logit_bias", 1.0),
    "qwen3-activation": ("qwen3-tied-mqa", "Qwen3ForCausalLM", "hidden_act", "mish"),
    "qwen3-unknown": ("qwen3-tied-mqa", "Qwen3ForCausalLM", "qk_norm_type", "layer"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_new_architectures_refuse_unsupported_fields_by_name(case):
    check_refused(CASES, REFUSED[case])


def test_gemma_legacy_gelu_means_the_tanh_approximation():
    from jaxmap.models import translate_config

    # transformers rewrites the original releases' "gelu" before saving, so parity cannot see it.
    hf_config = case_hf_config(CASES, "gemma-mqa-legacy-gelu", "GemmaForCausalLM")
    hf_config.update(hidden_act="gelu", hidden_activation="gelu_pytorch_tanh")
    assert translate_config(hf_config, "tiny")[1].activation == "gelu_tanh"
