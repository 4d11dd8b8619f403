"""Rope scalings against transformers (PyTorch, CPU, float32): YaRN, LongRoPE and dynamic NTK.

The texts cross the original context (16 tokens) on both sides, some by exactly one token, so
LongRoPE's short/long choice and dynamic NTK's recomputed base are both exercised, within one
batch too (rows of different lengths choose their own frequencies). transformers chooses by the
length of the sequence it runs, which for a text scored alone is that text's token count.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers

from jaxmap.errors import UnsupportedModelError
from jaxmap.models import translate_config

from conftest import TEXTS, save_random_model
from parity import check_parity

torch = pytest.importorskip("torch")

ORIGINAL = 16
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=300)
# With BOS these are 15, 16, 18 and 19 tokens long; without, 14, 15, 17 and 18.
THRESHOLD_TEXTS = ["Call me Ishmael", "Call me Ishmael.", "Call me Ishmael. S", "Call me Ishmael. So"]
ROPE_TEXTS = TEXTS + THRESHOLD_TEXTS

SHORT = [1.0, 1.1, 1.3, 1.2, 1.6, 2.0, 2.5, 3.0]
LONG = [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 14.0, 20.0]


def llama(max_positions: int, rope: dict, **overrides) -> transformers.LlamaConfig:
    settings = dict(
        **SMALL, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        rope_parameters={"rope_theta": 10000.0, **rope},
    )
    return transformers.LlamaConfig(**{**settings, **overrides})


def phi3() -> transformers.PretrainedConfig:
    return transformers.Phi3Config(
        **SMALL, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        original_max_position_embeddings=ORIGINAL, pad_token_id=None,
        rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": SHORT, "long_factor": LONG,
        },
    )


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL}
YARN_MSCALE = {
    "rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": ORIGINAL,
    "beta_fast": 16, "beta_slow": 2, "mscale": 0.8, "mscale_all_dim": 0.5, "truncate": False,
}
LONGROPE = {
    "rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG,
    "original_max_position_embeddings": ORIGINAL,
}
DYNAMIC = {"rope_type": "dynamic", "factor": 8.0}

# name -> (config factory, options); transformers runs dynamic NTK past max_position_embeddings
# (16 here), and jaxmap scores such a model up to factor times that, so transformers is run that
# far too, each text on a fresh model.
CASES = {
    "llama-yarn-mscale-untruncated": (lambda: llama(128, YARN_MSCALE), {}),
    "llama-longrope": (lambda: llama(256, LONGROPE), {}),
    "llama-dynamic": (lambda: llama(ORIGINAL, DYNAMIC), {"n_ctx": ORIGINAL * 8, "alone": True}),
    "phi3-longrope": (phi3, {}),
}
# (policy, tokenizer adds BOS): the paper policy without BOS shifts every length by one.
POLICIES = {"full": ("full", True), "paper": ("paper", False)}


@pytest.fixture(scope="module")
def rope_text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rope-texts") / "texts.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(ROPE_TEXTS)))
    return path


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers_across_the_original_context(case, policy, tmp_path, rope_text_file):
    bos_policy, adds_bos = POLICIES[policy]
    make_config, options = CASES[case]
    # Packed rows hold texts below and above the original context side by side: each token
    # must take the frequencies of its own text's length.
    (parity,) = check_parity(
        case, (make_config, {**options, "policy": bos_policy, "adds_bos": adds_bos}), tmp_path,
        rope_text_file, texts=ROPE_TEXTS,
    )
    hf_config = json.loads((parity.directory / "config.json").read_text())
    _, decoder_config = translate_config(hf_config, case)
    dynamic = "dynamic" in case
    n_ctx = decoder_config.max_positions
    assert n_ctx == (ORIGINAL * 8 if dynamic else make_config().max_position_embeddings)
    # transformers' texts were cut to the context jaxmap scores.
    assert n_ctx == options.get("n_ctx", n_ctx) == parity.n_ctx

    lengths = parity.counts + 1
    assert (lengths == ORIGINAL).any() or (lengths == ORIGINAL - 1).any()
    assert (lengths == ORIGINAL + 1).any() or (lengths == ORIGINAL + 2).any()
    assert (lengths > 2 * ORIGINAL).sum() >= 3, "long texts must exercise the long frequencies"


def _hf_rope(config, seq_len=None):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, attention = ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config, "cpu", seq_len=seq_len)
    return inv_freq.numpy(), attention


TABLE_CASES = {
    "yarn": YARN,
    "yarn-mscale-untruncated": YARN_MSCALE,
    "yarn-attention-factor-no-factor": {
        "rope_type": "yarn", "factor": None, "original_max_position_embeddings": 32, "attention_factor": 1.3,
    },
    "yarn-mscale-only": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64, "mscale": 0.7},
    "longrope": LONGROPE,
    "longrope-explicit": {**LONGROPE, "factor": 3.0, "attention_factor": 0.9},
    "llama3-default-context": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    },
}


@pytest.mark.parametrize("case", sorted(TABLE_CASES))
def test_rope_tables_match_transformers(case):
    config = llama(128, TABLE_CASES[case])
    table = translate_config({**config.to_dict(), "architectures": ["LlamaForCausalLM"]}, case)[1].rope_tables[0]
    inv_freq, attention = _hf_rope(config)
    np.testing.assert_allclose(table.inv_freq, inv_freq, rtol=1e-6)
    assert table.attention_factor == pytest.approx(attention, rel=1e-12)
    if table.long_inv_freq:
        original = config.rope_parameters["original_max_position_embeddings"]
        long_inv_freq, _ = _hf_rope(config, seq_len=original + 1)
        np.testing.assert_allclose(table.long_inv_freq, long_inv_freq, rtol=1e-6)
        assert table.original_context == original
        assert not np.allclose(long_inv_freq, inv_freq)


def test_dynamic_frequencies_per_row_match_transformers():
    from jaxmap.models.decoder import _token_inv_freq

    config = llama(ORIGINAL, DYNAMIC)
    table = translate_config({**config.to_dict(), "architectures": ["LlamaForCausalLM"]}, "dynamic")[1].rope_tables[0]
    lengths = [3, ORIGINAL, ORIGINAL + 1, 40, 128]
    # Per token: one row whose tokens belong to sequences of these lengths (a packed row).
    got = np.asarray(_token_inv_freq(table, np.array([lengths], np.int32)))[0]
    for row, length in enumerate(lengths):
        expected, _ = _hf_rope(config, seq_len=torch.tensor(length))
        np.testing.assert_allclose(got[row], expected, rtol=2e-6)
    assert np.array_equal(got[0], got[1]) and not np.allclose(got[1], got[2])


def test_rows_of_one_batch_choose_their_own_frequencies(tmp_path):
    """A padded batch mixing rows below and above the original context gives each row what it
    gets alone, for LongRoPE and dynamic NTK."""
    from jaxmap.engine import load_model, token_log_likelihoods

    rng = np.random.default_rng(0)
    for name in ("llama-longrope", "llama-dynamic"):
        directory = save_random_model(tmp_path / name, CASES[name][0](), seed=3)
        model = load_model(str(directory))
        row_lengths = [ORIGINAL, ORIGINAL + 1, 5, 3 * ORIGINAL]
        width = max(row_lengths)
        rows = [rng.integers(0, 300, size=n, dtype=np.int32) for n in row_lengths]
        batch = np.zeros((len(rows), width), np.int32)
        for i, row in enumerate(rows):
            batch[i, : len(row)] = row
        together = np.asarray(
            token_log_likelihoods(model.params, batch, model.config, lengths=np.array(row_lengths, np.int32))
        )
        for i, row in enumerate(rows):
            alone = np.asarray(token_log_likelihoods(model.params, row[None], model.config))[0]
            np.testing.assert_allclose(together[i, : len(row) - 1], alone, atol=1e-4, err_msg=name)
        # The rows really differ in their frequencies: scoring the short rows as if they were
        # as long as the batch changes them.
        as_long = np.asarray(token_log_likelihoods(model.params, batch, model.config))
        assert np.abs(as_long[0, : ORIGINAL - 1] - together[0, : ORIGINAL - 1]).max() > 1e-3, name


REFUSED = {
    "yarn-unknown": ({**YARN, "low_freq_factor": 1.0}, "low_freq_factor"),
    "longrope-unknown": ({**LONGROPE, "beta_fast": 32}, "beta_fast"),
    "dynamic-unknown": ({**DYNAMIC, "mscale": 1.0}, "mscale"),
    "longrope-missing-long-factor": ({k: v for k, v in LONGROPE.items() if k != "long_factor"}, "long_factor"),
    "longrope-wrong-length": ({**LONGROPE, "short_factor": SHORT[:5]}, "short_factor"),
    "dynamic-missing-factor": ({"rope_type": "dynamic"}, "factor"),
    "unknown-type": ({"rope_type": "su"}, "'su'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unknown_or_incomplete_rope_parameters_are_refused_by_name(case):
    rope, named = REFUSED[case]
    config = {
        **llama(128, {"rope_type": "default"}).to_dict(),
        "architectures": ["LlamaForCausalLM"],
        "rope_parameters": {"rope_theta": 10000.0, **rope},
    }
    with pytest.raises(UnsupportedModelError, match=named):
        translate_config(config, "tiny")
