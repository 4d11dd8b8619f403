"""Parity with transformers (PyTorch, CPU, float32) for GPT-J, CodeGen, Phi, Phi-3 and StableLM:
max |Δ per-text log-likelihood| ≤ 1e-3 nats on small random models, for every variant switch
and both BOS policies; and their config fields jaxmap lacks are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import transformers

from parity import case_hf_config, check_parity, check_refused

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=300)


def gptj(**overrides):
    settings = dict(n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=256, vocab_size=300)
    return transformers.GPTJConfig(**{**settings, **overrides})


def codegen(**overrides):
    settings = dict(n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=256, n_ctx=256, vocab_size=300)
    return transformers.CodeGenConfig(**{**settings, **overrides})


def rope(partial: float, theta: float = 10000.0) -> dict:
    return {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": partial}


def phi(**overrides):
    settings = dict(**SMALL, num_attention_heads=4, max_position_embeddings=256, rope_parameters=rope(0.5))
    return transformers.PhiConfig(**{**settings, **overrides})


def phi3(**overrides):
    settings = dict(
        **SMALL, num_attention_heads=4, max_position_embeddings=256, rope_parameters=rope(1.0),
        pad_token_id=None,
    )
    return transformers.Phi3Config(**{**settings, **overrides})


def stablelm(**overrides):
    settings = dict(**SMALL, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, rope_parameters=rope(0.25))
    return transformers.StableLmConfig(**{**settings, **overrides})


# name -> (config factory, options: policy, adds_bos). Head dim is 16 throughout.
CASES = {
    "gptj-partial-rotary": (lambda: gptj(rotary_dim=8), {"adds_bos": False}),
    "gptj-partial-rotary-paper": (lambda: gptj(rotary_dim=8), {"adds_bos": False, "policy": "paper"}),
    "gptj-full-rotary-tied": (lambda: gptj(rotary_dim=16, tie_word_embeddings=True), {"policy": "paper"}),
    "codegen-partial-rotary": (lambda: codegen(rotary_dim=8), {"adds_bos": False}),
    "codegen-full-rotary-tied-paper": (
        lambda: codegen(rotary_dim=16, tie_word_embeddings=True), {"adds_bos": False, "policy": "paper"}
    ),
    "phi": (lambda: phi(), {}),
    "phi-paper-no-bos": (lambda: phi(), {"adds_bos": False, "policy": "paper"}),
    "phi-qk-layernorm-gqa": (lambda: phi(qk_layernorm=True, num_key_value_heads=2), {}),
    "phi-qk-layernorm-tied-paper": (
        lambda: phi(qk_layernorm=True, tie_word_embeddings=True, rope_parameters=rope(0.75)), {"policy": "paper"}
    ),
    "phi3": (lambda: phi3(), {}),
    "phi3-gqa-partial-rotary-sliding-paper": (
        lambda: phi3(num_key_value_heads=2, rope_parameters=rope(0.5), sliding_window=6), {"policy": "paper"}
    ),
    "phi3-tied-short-context": (lambda: phi3(tie_word_embeddings=True, max_position_embeddings=24), {"adds_bos": False}),
    # Texts past the 16-token pretraining context switch the whole sequence to the long factors.
    "phi3-longrope": (
        lambda: phi3(
            original_max_position_embeddings=16,
            rope_parameters={
                "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
                "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8],
                "long_factor": [1.0, 1.5, 2.2, 3.0, 4.1, 5.5, 7.2, 9.0],
            },
        ),
        {},
    ),
    "stablelm-sequential": (lambda: stablelm(), {}),
    "stablelm-sequential-bias-qk-norm-paper": (
        lambda: stablelm(use_qkv_bias=True, qk_layernorm=True, num_key_value_heads=2), {"policy": "paper"}
    ),
    "stablelm-parallel": (lambda: stablelm(use_parallel_residual=True), {"adds_bos": False, "policy": "paper"}),
    "stablelm-parallel-bias-qk-norm-tied": (
        lambda: stablelm(
            use_parallel_residual=True, use_qkv_bias=True, qk_layernorm=True, tie_word_embeddings=True,
            rope_parameters=rope(0.5),
        ),
        {},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(case, tmp_path, text_file):
    check_parity(case, CASES[case], tmp_path, text_file)


def test_interleaved_rotary_is_rotate_half_after_the_permutation():
    from jaxmap.models.decoder import _apply_rope
    from jaxmap.models.gptj import interleaved_to_half_rotary

    rotary_dim, head_dim, length = 8, 12, 5
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, length, 2, head_dim)).astype(np.float32)
    inv_freq = 1.0 / 10000 ** (np.arange(0, rotary_dim, 2) / rotary_dim)
    angles = np.arange(length)[:, None] * inv_freq[None]
    # GPT-J: pair (2i, 2i+1) turns by angle i.
    even, odd = x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]
    cos, sin = np.cos(angles)[None, :, None], np.sin(angles)[None, :, None]
    expected = x.copy()
    expected[..., 0:rotary_dim:2] = even * cos - odd * sin
    expected[..., 1:rotary_dim:2] = odd * cos + even * sin
    order = interleaved_to_half_rotary(rotary_dim, head_dim)
    doubled = np.concatenate([angles, angles], axis=-1)
    got = _apply_rope(x[..., order], np.cos(doubled), np.sin(doubled), rotary_dim)
    np.testing.assert_allclose(np.asarray(got), expected[..., order], atol=1e-5)


# name -> (parity case, architecture, field, value the port lacks).
REFUSED = {
    "gptj-rotary-dim-missing": ("gptj-partial-rotary", "GPTJForCausalLM", "rotary_dim", None),
    "gptj-rotary-dim-odd": ("gptj-partial-rotary", "GPTJForCausalLM", "rotary_dim", 7),
    "gptj-rotary-dim-too-wide": ("gptj-partial-rotary", "GPTJForCausalLM", "rotary_dim", 32),
    "gptj-activation": ("gptj-partial-rotary", "GPTJForCausalLM", "activation_function", "mish"),
    "codegen-odd-width": ("codegen-partial-rotary", "CodeGenForCausalLM", "n_embd", 66),
    "codegen-unknown": ("codegen-partial-rotary", "CodeGenForCausalLM", "attn_logit_softcapping", 30.0),
    "codegen-no-rotary": ("codegen-partial-rotary", "CodeGenForCausalLM", "rotary", False),
    "phi-activation": ("phi", "PhiForCausalLM", "hidden_act", "mish"),
    "phi-qk-norm-head-dim": ("phi-qk-layernorm-gqa", "PhiForCausalLM", "head_dim", 8),
    "phi-unknown": ("phi", "PhiForCausalLM", "attention_bias", False),
    "phi3-activation": ("phi3", "Phi3ForCausalLM", "hidden_act", "mish"),
    "phi3-unknown": ("phi3", "Phi3ForCausalLM", "qk_layernorm", True),
    "phi3-attention-bias": ("phi3", "Phi3ForCausalLM", "attention_bias", True),
    "stablelm-activation": ("stablelm-sequential", "StableLmForCausalLM", "hidden_act", "mish"),
    "stablelm-unknown": ("stablelm-sequential", "StableLmForCausalLM", "mlp_bias", True),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_fields_are_refused_by_name(case):
    check_refused(CASES, REFUSED[case])


@pytest.mark.parametrize(
    "parity_case, architecture, fields",
    [
        ("gptj-partial-rotary", "GPTJForCausalLM", {"rotary": True, "scale_attn_weights": True, "gradient_checkpointing": False}),
        ("codegen-partial-rotary", "CodeGenForCausalLM", {"scale_attn_weights": True, "gradient_checkpointing": False}),
        ("phi3", "Phi3ForCausalLM", {"attention_bias": False, "mlp_bias": False, "lm_head_bias": False}),
    ],
)
def test_fields_of_released_configs_that_change_nothing_are_accepted(parity_case, architecture, fields):
    from jaxmap.models import translate_config

    base = case_hf_config(CASES, parity_case, architecture)
    assert translate_config({**base, **fields}, "tiny") == translate_config(base, "tiny")
