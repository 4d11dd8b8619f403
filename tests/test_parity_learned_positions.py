"""Parity with transformers (PyTorch, CPU, float32) for OPT, XGLM, GPT-Neo, GPT-BigCode and
Starcoder2 on small random models: max |delta per-text log-likelihood| <= 1e-3 nats, under both
BOS policies, for every variant that changes the maths."""

from __future__ import annotations

import numpy as np
import pytest
import transformers

import jaxmap

from parity import case_hf_config, check_parity, check_refused, save_case

# Contexts this short truncate the longest texts (learned tables end there).
SHORT_CONTEXT = 30


def opt(**overrides):
    settings = dict(
        hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=300,
        max_position_embeddings=256,
    )
    return transformers.OPTConfig(**{**settings, **overrides})


def xglm(**overrides):
    settings = dict(
        d_model=64, ffn_dim=96, num_layers=2, attention_heads=4, vocab_size=300,
        max_position_embeddings=256,
    )
    return transformers.XGLMConfig(**{**settings, **overrides})


def gpt_neo(**overrides):
    settings = dict(
        hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, vocab_size=300,
        max_position_embeddings=256, attention_types=[[["global", "local"], 1]], window_size=5,
    )
    return transformers.GPTNeoConfig(**{**settings, **overrides})


def bigcode(**overrides):
    settings = dict(n_embd=64, n_inner=96, n_layer=2, n_head=4, vocab_size=300, n_positions=256)
    return transformers.GPTBigCodeConfig(**{**settings, **overrides})


def starcoder2(**overrides):
    settings = dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, max_position_embeddings=256,
    )
    return transformers.Starcoder2Config(**{**settings, **overrides})


# name: (config factory, save_random_model options)
CASES = {
    # Pre-LN with 48-wide embeddings projected in and out (folded into the embedding matrices).
    "opt-pre-ln-projected-tied": (
        lambda: opt(word_embed_proj_dim=48, activation_function="gelu"), {"adds_bos": False}
    ),
    # opt-350m's layout: post-LN blocks, no final norm, 32-wide embeddings projected in and out.
    "opt-post-ln-projected-tied": (lambda: opt(do_layer_norm_before=False, word_embed_proj_dim=32), {}),
    "opt-pre-ln-untied-short": (
        lambda: opt(tie_word_embeddings=False, max_position_embeddings=SHORT_CONTEXT), {"adds_bos": False}
    ),
    "opt-no-bias-no-affine-no-final-norm": (
        lambda: opt(enable_bias=False, layer_norm_elementwise_affine=False, _remove_final_layer_norm=True),
        {},
    ),
    "xglm": (lambda: xglm(), {}),
    "xglm-unscaled-short": (
        lambda: xglm(scale_embedding=False, max_position_embeddings=SHORT_CONTEXT), {"adds_bos": False}
    ),
    "gpt-neo-local-window": (lambda: gpt_neo(), {"adds_bos": False}),
    "gpt-neo-short-local-first": (
        lambda: gpt_neo(
            attention_types=[[["local", "global", "local"], 1]], num_layers=3, window_size=3,
            max_position_embeddings=SHORT_CONTEXT,
        ),
        {},
    ),
    "bigcode-multi-query": (lambda: bigcode(multi_query=True), {"adds_bos": False}),
    "bigcode-multi-head-short-unscaled-untied": (
        lambda: bigcode(
            multi_query=False, n_positions=SHORT_CONTEXT, scale_attn_weights=False,
            tie_word_embeddings=False, activation_function="gelu",
        ),
        {},
    ),
    "starcoder2-gqa-sliding": (lambda: starcoder2(sliding_window=6), {"adds_bos": False}),
    "starcoder2-no-bias-untied-mqa": (
        lambda: starcoder2(use_bias=False, tie_word_embeddings=False, num_key_value_heads=1), {}
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(case, tmp_path, text_file):
    check_parity(case, CASES[case], tmp_path, text_file, policies=("full", "paper"), batch_tokens=512)


# Config fields that would change the maths in ways these ports lack: refused by name.
REFUSED = {
    "opt-projected-untied": ("opt-post-ln-projected-tied", "OPTForCausalLM", "tie_word_embeddings", False),
    "opt-activation": ("opt-pre-ln-untied-short", "OPTForCausalLM", "activation_function", "mish"),
    "opt-unknown": ("opt-pre-ln-untied-short", "OPTForCausalLM", "scale_embedding", True),
    "xglm-padding-row-in-use": ("xglm", "XGLMForCausalLM", "pad_token_id", 5),
    "xglm-cross-attention": ("xglm", "XGLMForCausalLM", "add_cross_attention", True),
    "gpt-neo-attention-type": (
        "gpt-neo-local-window", "GPTNeoForCausalLM", "attention_types", [[["global", "sparse"], 1]]
    ),
    "gpt-neo-attention-layers": (
        "gpt-neo-local-window", "GPTNeoForCausalLM", "attention_layers", ["local", "local"]
    ),
    "bigcode-kv-heads": ("bigcode-multi-query", "GPTBigCodeForCausalLM", "num_key_value_heads", 4),
    "bigcode-inverse-layer-scale": (
        "bigcode-multi-query", "GPTBigCodeForCausalLM", "scale_attn_by_inverse_layer_idx", True
    ),
    "starcoder2-partial-rotary": (
        "starcoder2-gqa-sliding", "Starcoder2ForCausalLM", "rope_parameters.partial_rotary_factor", 0.5
    ),
    "starcoder2-activation": ("starcoder2-gqa-sliding", "Starcoder2ForCausalLM", "hidden_act", "mish"),
    "starcoder2-unknown": ("starcoder2-gqa-sliding", "Starcoder2ForCausalLM", "qk_norm", True),
    "starcoder2-norm-type": ("starcoder2-gqa-sliding", "Starcoder2ForCausalLM", "norm_type", "rms_norm"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_fields_are_refused_by_name(case):
    check_refused(CASES, REFUSED[case])


# Fields that released checkpoints' config.json files carry beyond what transformers 5 writes
# (opt-125m, xglm-564M, gpt-neo-125m, starcoderbase-1b, starcoder2-3b); transformers' models
# ignore them or they only matter in training.
RELEASED_EXTRA_FIELDS = {
    "opt-pre-ln-untied-short": ("OPTForCausalLM", {"activation_dropout": 0.0, "prefix": "</s>"}),
    "xglm": ("XGLMForCausalLM", {"activation_dropout": 0.0, "decoder_start_token_id": 2}),
    "gpt-neo-local-window": ("GPTNeoForCausalLM", {"gradient_checkpointing": False, "summary_type": "cls_index"}),
    "bigcode-multi-query": (
        "GPTBigCodeForCausalLM",
        {"inference_runner": 0, "max_batch_size": None, "max_sequence_length": None,
         "pad_key_length": True, "pre_allocate_kv_cache": False, "validate_runner_input": True},
    ),
    "starcoder2-gqa-sliding": (
        "Starcoder2ForCausalLM", {"mlp_type": "default", "norm_type": "layer_norm", "layer_norm_epsilon": 1e-5}
    ),
}


@pytest.mark.parametrize("case", sorted(RELEASED_EXTRA_FIELDS))
def test_released_checkpoint_fields_are_accepted(case):
    from jaxmap.models import translate_config

    architecture, extra = RELEASED_EXTRA_FIELDS[case]
    hf_config = case_hf_config(CASES, case, architecture)
    expected = translate_config(hf_config, "tiny")[1]
    assert translate_config({**hf_config, **extra}, "tiny")[1] == expected


def test_opt_reads_checkpoints_saved_without_the_model_prefix(tmp_path, text_file):
    """facebook/opt-* checkpoints name their tensors ``decoder.*`` (no ``model.``)."""
    from safetensors.numpy import load_file, save_file

    case = "opt-post-ln-projected-tied"
    directory = save_case(case, CASES[case], tmp_path / "model", seed=3)
    scores = [
        jaxmap.score([str(directory)], text_file, out=tmp_path / "prefixed.h5", progress=False).loglik[0]
    ]
    weights_file = directory / "model.safetensors"
    tensors = load_file(weights_file)
    assert any(name.startswith("model.decoder.") for name in tensors)
    save_file({name.removeprefix("model."): value for name, value in tensors.items()}, weights_file,
              metadata={"format": "pt"})
    scores.append(
        jaxmap.score([str(directory)], text_file, out=tmp_path / "bare.h5", progress=False).loglik[0]
    )
    np.testing.assert_array_equal(scores[0], scores[1])
