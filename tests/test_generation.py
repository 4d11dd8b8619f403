"""Sampling with a key/value cache (jaxmap.models.generation): the cached decode's logits equal
the full forward's on every decoder variant, sampled token frequencies match the softmax by a
chi-square test, and lengths the cache cannot serve are refused by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from scipy import stats

from conftest import randomize, save_random_model
from jaxmap.engine import load_model
from jaxmap.errors import JaxmapError
from jaxmap.models import hidden_states
from jaxmap.models.decoder import RopeTable, final_norm, unembedding, unembedding_bias
from jaxmap.models.generation import cached_logits, check_length, sample

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=300)
WORDS = ["<s>", "a", "b", "c", "d"]


def save_small_vocab_model(directory: Path, seed: int, **overrides) -> Path:
    """A random Llama over a five-token vocabulary (a start token and four words), saved with
    its word-level tokenizer: small enough that every 3-token text can be enumerated."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<s>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>").save_pretrained(directory)
    settings = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(WORDS), max_position_embeddings=16,
        bos_token_id=0, eos_token_id=None, pad_token_id=None,
    )
    config = transformers.LlamaConfig(**{**settings, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def full_logits(params, tokens, config) -> np.ndarray:
    """Next-token logits [B, T, V] from the scoring forward (hidden_states), float32."""
    hidden, _ = hidden_states(params, jnp.asarray(tokens), config)
    weights = unembedding(params, config)[: config.vocab_size]
    logits = jnp.einsum("btd,vd->btv", hidden.astype(weights.dtype), weights,
                        preferred_element_type=jnp.float32)
    bias = unembedding_bias(params)
    if bias is not None:
        logits = logits + bias[: config.vocab_size]
    if config.final_logit_softcap:
        logits = config.final_logit_softcap * jnp.tanh(logits / config.final_logit_softcap)
    return np.asarray(logits)


PARITY_CASES = {
    "llama-gqa-rope": (lambda: transformers.LlamaConfig(
        **SMALL, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64), {}),
    "gpt2-learned-positions": (lambda: transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=300), {}),
    "bloom-alibi": (lambda: transformers.BloomConfig(
        hidden_size=64, n_layer=2, n_head=4, vocab_size=300), {"adds_bos": False}),
    "falcon-alibi-bfloat16": (lambda: transformers.FalconConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=300, alibi=True,
        ffn_hidden_size=96, max_position_embeddings=64), {}),
    "mistral-sliding-window": (lambda: transformers.MistralConfig(
        **SMALL, num_attention_heads=4, num_key_value_heads=2, sliding_window=7,
        max_position_embeddings=64), {}),
    "gemma2-softcaps-window": (lambda: transformers.Gemma2Config(
        **SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        query_pre_attn_scalar=24, sliding_window=5, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0, max_position_embeddings=64), {"norm_center": 0.0}),
    "gemma3-two-rope-tables": (lambda: transformers.Gemma3TextConfig(
        **SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        query_pre_attn_scalar=24, sliding_window=6, max_position_embeddings=64,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0},
        }), {"norm_center": 0.0}),
    "gptj-parallel-partial-rotary": (lambda: transformers.GPTJConfig(
        n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, vocab_size=300), {}),
    "mixtral-experts": (lambda: transformers.MixtralConfig(
        hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=64), {}),
    "opt-post-norm": (lambda: transformers.OPTConfig(
        hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=300,
        max_position_embeddings=64, word_embed_proj_dim=64, do_layer_norm_before=False), {}),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_cached_decode_logits_equal_the_full_forward(case, tmp_path):
    """Prefill 3 tokens, then 21 decode steps one token at a time through the cache: every
    position's logits equal the scoring forward's to 1e-5 of the logits' scale (rows longer
    than every sliding window, so windows cut in during the decode)."""
    factory, options = PARITY_CASES[case]
    directory = save_random_model(tmp_path / "model", factory(), seed=3, **options)
    model = load_model(str(directory))
    tokens = np.random.default_rng(len(case)).integers(0, model.config.vocab_size, (2, 24))
    got = np.asarray(cached_logits(model.params, jnp.asarray(tokens, jnp.int32), model.config, prompt_length=3))
    expected = full_logits(model.params, tokens, model.config)
    scale = max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(got - expected).max())
    print(f"{case}: max |cached - full| = {error:.2e} (logits up to {scale:.3g})")
    assert error <= 1e-5 * scale, (case, error, scale)
    # The check has teeth: logits of another position differ by far more.
    assert np.abs(got[:, 1:] - expected[:, :-1]).max() > 1e3 * error + 1e-3


def test_sampler_log_probs_are_the_full_forwards(tmp_path):
    """The log-probs sample() returns are log-softmax of the full forward's logits at the
    tokens it drew, and a fixed key draws the same tokens again."""
    directory = save_random_model(tmp_path / "model", transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=300), seed=5)
    model = load_model(str(directory))
    prompt = np.full((4, 2), 7, np.int32)
    tokens, logprobs = sample(model.params, model.config, prompt, 12, jax.random.key(1))
    again, _ = sample(model.params, model.config, prompt, 12, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(again))
    other, _ = sample(model.params, model.config, prompt, 12, jax.random.key(2))
    assert not np.array_equal(np.asarray(tokens), np.asarray(other))
    assert tokens.shape == logprobs.shape == (4, 12) and logprobs.dtype == jnp.float32
    full = np.concatenate([prompt, np.asarray(tokens)], axis=1)
    expected = jax.nn.log_softmax(full_logits(model.params, full, model.config), axis=-1)
    picked = np.take_along_axis(np.asarray(expected)[:, 1:-1], full[:, 2:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(logprobs), picked, atol=2e-5)


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory):
    return load_model(str(save_small_vocab_model(tmp_path_factory.mktemp("small") / "m", seed=11)))


def _probabilities(model, prefix: list[int], temperature: float = 1.0) -> np.ndarray:
    logits = full_logits(model.params, np.array([prefix]), model.config)[0, -1]
    return np.asarray(jax.nn.softmax(logits / temperature))


def _chi_square(observed: np.ndarray, probabilities: np.ndarray) -> float:
    probabilities = np.asarray(probabilities, np.float64)
    expected = probabilities / probabilities.sum() * observed.sum()
    assert expected.min() >= 5, "every category needs an expected count of 5 for the test to hold"
    return float(stats.chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_frequencies_match_the_softmax(small_vocab_model, temperature):
    """20,000 samples at a fixed seed: the first token's frequencies match the softmax after the
    start token, and the second token's, among samples whose first token was the commonest word,
    match the softmax after that prefix (chi-square p > 0.001). The same counts reject the
    distribution of the other temperature (p < 1e-6), so the test can fail."""
    model = small_vocab_model
    count = 20_000
    prompt = np.zeros((count, 1), np.int32)
    tokens, _ = sample(model.params, model.config, prompt, 2, jax.random.key(0), temperature=temperature)
    tokens = np.asarray(tokens)
    vocab = model.config.vocab_size
    other = 2.0 if temperature == 1.0 else 1.0

    first = np.bincount(tokens[:, 0], minlength=vocab)
    assert _chi_square(first, _probabilities(model, [0], temperature)) > 1e-3
    assert _chi_square(first, _probabilities(model, [0], other)) < 1e-6

    # The commonest word, not the start token: after a second start token the context barely
    # changes.
    commonest = 1 + int(first[1:].argmax())
    second = np.bincount(tokens[tokens[:, 0] == commonest, 1], minlength=vocab)
    conditional = _probabilities(model, [0, commonest], temperature)
    assert _chi_square(second, conditional) > 1e-3
    # Conditioning matters: the second position's distribution is not the first's.
    assert _chi_square(second, _probabilities(model, [0], temperature)) < 1e-6


def test_lengths_the_cache_cannot_serve_are_refused(small_vocab_model):
    model = small_vocab_model
    prompt = np.zeros((1, 1), np.int32)
    with pytest.raises(JaxmapError, match="need 17 positions; the model has 16"):
        sample(model.params, model.config, prompt, 16, jax.random.key(0))
    with pytest.raises(JaxmapError, match="at least 1"):
        sample(model.params, model.config, prompt, 0, jax.random.key(0))
    with pytest.raises(JaxmapError, match="temperature"):
        sample(model.params, model.config, prompt, 2, jax.random.key(0), temperature=0.0)
    tokens, _ = sample(model.params, model.config, prompt, 15, jax.random.key(0))
    assert tokens.shape == (1, 15)
    # Dynamic NTK rescales every position's frequencies once a sequence outgrows its original
    # context: a cached decode must stop there.
    table = model.config.rope_tables[0]
    dynamic = RopeTable(table.inv_freq, original_context=8, ntk_factor=2.0, theta=10000.0)
    config = dataclasses.replace(model.config, rope_tables=(dynamic,))
    check_length(config, 8)
    with pytest.raises(JaxmapError, match="original rope context of 8"):
        sample(model.params, config, prompt, 8, jax.random.key(0))
