"""Parity with transformers (PyTorch, CPU, float32) for Bloom, Falcon and MPT: max |Δ per-text
log-likelihood| ≤ 1e-3 nats for every variant switch (ALiBi with head counts that are not powers
of two, Falcon's decoder architectures and rotary or ALiBi positions, MPT's attention settings),
under both BOS policies; their slope formulas; and the config fields they refuse by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import transformers

import jaxmap
from jaxmap.models.bloom import NO_CONTEXT_LIMIT

from conftest import save_random_model
from parity import case_hf_config, check_parity, check_refused


def bloom(**overrides):
    return transformers.BloomConfig(**{"n_layer": 2, "vocab_size": 300, **overrides})


def falcon(**overrides):
    settings = dict(
        num_hidden_layers=2, vocab_size=300, ffn_hidden_size=96, max_position_embeddings=256
    )
    return transformers.FalconConfig(**{**settings, **overrides})


def mpt(**overrides):
    return transformers.MptConfig(**{"n_layers": 2, "vocab_size": 300, "max_seq_len": 256, **overrides})


CASES = {
    # Bloom: 6 heads take the extra slopes of the 8-head sequence; 12 heads those of 16, which
    # are not powers of two.
    "bloom-6-heads": (lambda: bloom(hidden_size=48, n_head=6), {}),
    "bloom-12-heads-untied-paper": (
        lambda: bloom(hidden_size=48, n_head=12, tie_word_embeddings=False), {"policy": "paper"}
    ),
    "bloom-no-bos-paper": (lambda: bloom(hidden_size=64, n_head=4), {"adds_bos": False, "policy": "paper"}),
    # Falcon, new decoder architecture (Falcon-40B): grouped kv heads, ln_attn and ln_mlp.
    "falcon-new-gqa-rotary": (
        lambda: falcon(
            hidden_size=64, num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        ),
        {},
    ),
    "falcon-new-one-norm-bias-paper": (
        lambda: falcon(
            hidden_size=64, num_attention_heads=4, num_kv_heads=1, new_decoder_architecture=True,
            num_ln_in_parallel_attn=1, bias=True,
        ),
        {"policy": "paper"},
    ),
    "falcon-new-gqa-alibi": (
        lambda: falcon(
            hidden_size=48, num_attention_heads=6, num_kv_heads=3, new_decoder_architecture=True,
            alibi=True,
        ),
        {"adds_bos": False},
    ),
    # Falcon, original architecture (Falcon-7B): multi-query, one norm shared by the parallel
    # attention and MLP.
    "falcon-mqa-parallel-rotary-short": (
        lambda: falcon(
            hidden_size=64, num_attention_heads=4, multi_query=True, parallel_attn=True,
            max_position_embeddings=30,
            rope_parameters={"rope_type": "linear", "rope_theta": 1000.0, "factor": 2.0},
        ),
        {"adds_bos": False},
    ),
    "falcon-mqa-parallel-alibi-paper": (
        lambda: falcon(hidden_size=40, num_attention_heads=5, multi_query=True, alibi=True, bias=True),
        {"policy": "paper"},
    ),
    # Falcon-RW: multi-head, sequential, biases, ALiBi. 20 heads have slopes that are not powers
    # of two, so Falcon's bfloat16 rounding of slope * position shows.
    "falcon-rw-mha-sequential-alibi-20-heads": (
        lambda: falcon(
            hidden_size=80, num_attention_heads=20, multi_query=False, parallel_attn=False,
            alibi=True, bias=True,
        ),
        {},
    ),
    "falcon-mha-sequential-rotary-paper": (
        lambda: falcon(
            hidden_size=64, num_attention_heads=4, multi_query=False, parallel_attn=False,
            activation="gelu_pytorch_tanh",
        ),
        {"adds_bos": False, "policy": "paper"},
    ),
    # MPT: 6 and 12 heads interleave the slopes of 8 and 16; a short context truncates.
    "mpt-6-heads": (lambda: mpt(d_model=48, n_heads=6), {}),
    # MosaicML's own checkpoints name their remote-code class; its tensors are named like the
    # port's. Shaped like mpt-6-heads, so it reuses that case's compiled scorers.
    "mpt-6-heads-mosaicml-class": (lambda: mpt(d_model=48, n_heads=6), {"architecture": "MPTForCausalLM"}),
    "mpt-12-heads-short-no-bos": (lambda: mpt(d_model=48, n_heads=12, max_seq_len=30), {"adds_bos": False}),
    "mpt-clip-softmax-scale-untied-paper": (
        lambda: mpt(
            d_model=64, n_heads=4, tie_word_embeddings=False,
            # Small enough that the clamp and the scale change the random model's scores.
            attn_config={"clip_qkv": 0.5, "softmax_scale": 0.3},
        ),
        {"policy": "paper"},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(case, tmp_path, text_file):
    (parity,) = check_parity(case, CASES[case], tmp_path, text_file)
    store = parity.store
    # Falcon's bfloat16 bias rounds absolute positions, so its texts never share rows; the
    # other ALiBi forms are relative and pack.
    assert ("cannot pack" in store.model_meta[0]["batching"]) == ("falcon" in case and "alibi" in case)
    if case.startswith("bloom"):
        # Bloom's config names no context (ALiBi): no text is cut.
        assert parity.n_ctx == NO_CONTEXT_LIMIT and not store.truncated[0].any()


HEAD_COUNTS = [*range(1, 41), 64, 71, 112]


def test_bloom_and_falcon_slopes_match_transformers():
    import torch
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    from jaxmap.models.bloom import alibi_slopes

    for heads in HEAD_COUNTS:
        expected = _get_alibi_slopes(heads, torch.device("cpu")).numpy()
        np.testing.assert_allclose(alibi_slopes(heads), expected, rtol=1e-6, atol=0, err_msg=str(heads))


@pytest.mark.parametrize("bias_max", [8, 16, 4])
def test_mpt_slopes_match_transformers_for_each_alibi_bias_max(bias_max):
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    from jaxmap.models.mpt import alibi_slopes

    for heads in HEAD_COUNTS:
        # Over two positions the bias is (-slope, 0).
        expected = -build_mpt_alibi_tensor(heads, 2, alibi_bias_max=bias_max)[:, 0, 0].numpy()
        np.testing.assert_allclose(
            alibi_slopes(heads, bias_max), expected, rtol=1e-6, atol=0, err_msg=f"{heads} heads"
        )
    if bias_max != 8:
        assert alibi_slopes(16, bias_max) != alibi_slopes(16, 8)


def test_falcon_bias_rounds_like_transformers_far_into_the_context():
    """Falcon's bias is bfloat16(slope * position): beyond 256 positions even the positions are
    rounded. The decoder's bias, relative to the query, must differ from transformers' per-key
    bias by one constant per query."""
    import torch
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    from jaxmap.models import translate_config
    from jaxmap.models.decoder import alibi_bias

    length, heads, head_dim = 700, 20, 4
    hf_config = case_hf_config(CASES, "falcon-rw-mha-sequential-alibi-20-heads", "FalconForCausalLM")
    config = translate_config(hf_config, "tiny")[1]
    assert config.num_heads == heads
    positions = np.arange(length)
    got = np.asarray(alibi_bias(config)(positions[:, None], positions[None, :])).reshape(heads, length, length)
    per_key = build_alibi_tensor(torch.ones(1, length, dtype=torch.long), heads, torch.float32)
    per_key = per_key[:, 0, :].numpy() / math.sqrt(head_dim)
    expected = per_key[:, None, :] - per_key[:, :, None]
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    # The rounding is there to be matched: exact slopes would be off by far more.
    exact = np.asarray(config.alibi_slopes)[:, None, None] * (np.arange(length)[None, :] - np.arange(length)[:, None])
    assert np.abs(exact / math.sqrt(head_dim) - expected).max() > 0.1


# (parity case, architecture, field path, value): config fields jaxmap refuses by name.
REFUSED = {
    "bloom-post-layernorm-residual": ("bloom-6-heads", "BloomForCausalLM", "apply_residual_connection_post_layernorm", True),
    "bloom-unknown": ("bloom-6-heads", "BloomForCausalLM", "n_inner", 128),
    "falcon-new-sequential": ("falcon-new-gqa-rotary", "FalconForCausalLM", "parallel_attn", False),
    "falcon-new-three-norms": ("falcon-new-gqa-rotary", "FalconForCausalLM", "num_ln_in_parallel_attn", 3),
    "falcon-old-two-norms": ("falcon-mqa-parallel-alibi-paper", "FalconForCausalLM", "num_ln_in_parallel_attn", 2),
    "falcon-old-grouped": ("falcon-mha-sequential-rotary-paper", "FalconForCausalLM", "num_kv_heads", 2),
    "falcon-activation": ("falcon-mqa-parallel-alibi-paper", "FalconForCausalLM", "activation", "mish"),
    "falcon-partial-rotary": (
        "falcon-new-gqa-rotary", "FalconForCausalLM", "rope_parameters.partial_rotary_factor", 0.5
    ),
    "falcon-post-layernorm-residual": (
        "falcon-rw-mha-sequential-alibi-20-heads", "FalconForCausalLM",
        "apply_residual_connection_post_layernorm", True,
    ),
    "falcon-unknown": ("falcon-new-gqa-rotary", "FalconForCausalLM", "rotary_pct", 0.5),
    "mpt-qk-ln": ("mpt-6-heads", "MptForCausalLM", "attn_config.qk_ln", True),
    "mpt-prefix-lm": ("mpt-6-heads", "MptForCausalLM", "attn_config.prefix_lm", True),
    "mpt-multiquery": ("mpt-6-heads", "MptForCausalLM", "attn_config.attn_type", "multiquery_attention"),
    "mpt-no-alibi": ("mpt-6-heads", "MptForCausalLM", "attn_config.alibi", False),
    "mpt-rope": ("mpt-6-heads", "MptForCausalLM", "attn_config.rope", True),
    "mpt-attention-unknown": ("mpt-6-heads", "MptForCausalLM", "attn_config.qk_gn_groups", 2),
    "mpt-biases": ("mpt-6-heads", "MptForCausalLM", "no_bias", False),
    "mpt-logit-scale": ("mpt-6-heads", "MptForCausalLM", "logit_scale", 2.0),
    "mpt-norm": ("mpt-6-heads", "MptForCausalLM", "norm_type", "rmsnorm"),
    "mpt-ffn": ("mpt-6-heads", "MptForCausalLM", "ffn_config", {"ffn_type": "te_ln_mlp"}),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_fields_are_refused_by_name(case):
    check_refused(CASES, REFUSED[case])


def test_mosaicml_checkpoint_config_translates():
    """MosaicML's own config.json (MPTForCausalLM, remote-code fields) is read like the port's."""
    from jaxmap.models import translate_config

    hf_config = {
        "architectures": ["MPTForCausalLM"], "model_type": "mpt", "d_model": 48, "n_heads": 6,
        "n_layers": 2, "expansion_ratio": 4, "max_seq_len": 2048, "vocab_size": 300,
        "attn_config": {
            "alibi": True, "alibi_bias_max": 8, "attn_impl": "triton", "attn_pdrop": 0,
            "attn_type": "multihead_attention", "attn_uses_sequence_id": False, "clip_qkv": None,
            "prefix_lm": False, "qk_ln": False, "softmax_scale": None,
        },
        "emb_pdrop": 0, "embedding_fraction": 1.0, "init_config": {"name": "kaiming_normal_"},
        "init_device": "cpu", "learned_pos_emb": True, "logit_scale": None, "no_bias": True,
        "norm_type": "low_precision_layernorm", "resid_pdrop": 0,
        "tokenizer_name": "EleutherAI/gpt-neox-20b", "use_cache": False, "verbose": 0,
    }
    architecture, config = translate_config(hf_config, "mosaic")
    assert architecture == "MPTForCausalLM"
    assert config.position == "alibi" and config.max_positions == 2048
    assert config.intermediate_size == 4 * 48 and config.tie_embeddings


def test_mpt_mlp_width_must_match_expansion_ratio(tmp_path):
    """transformers' MPT ignores expansion_ratio (its MLP is always 4 x d_model); jaxmap reads it
    and refuses a checkpoint whose MLP has another width."""
    import json

    from jaxmap.engine import load_model

    directory = save_random_model(tmp_path / "model", mpt(d_model=48, n_heads=6))
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["expansion_ratio"] = 2
    config_path.write_text(json.dumps(config))
    with pytest.raises(jaxmap.errors.UnsupportedModelError, match=r"up_proj has 192 outputs, .* is 96"):
        load_model(str(directory))
