"""The Monte Carlo KL (jaxmap.analysis.true_kl) against the exact KL of a model pair whose text
distribution can be enumerated, its standard error's 1/sqrt(N) shrinkage, the detour through
text for different tokenizers (against the exact value of what it estimates, for a word-level
model against a character-level one), the noncanonical share's warning and refusal, and the
`jaxmap true-kl` command, wrong inputs included."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import transformers

from conftest import randomize
from jaxmap.analysis.true_kl import MAX_NONCANONICAL, draw_samples, true_kl
from jaxmap.cli import main
from jaxmap.engine import load_model, score_tokens
from jaxmap.errors import JaxmapError
from jaxmap.tokenization import TokenizedTexts
from test_generation import WORDS, save_small_vocab_model

LENGTH = 3
# A character-level vocabulary over the word-level models' letters: the same strings, cut into
# one token per character and space.
CHARACTERS = ["<s>", "a", "b", "c", "d", " "]


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    root = tmp_path_factory.mktemp("true-kl")
    return [save_small_vocab_model(root / f"m{seed}", seed=seed) for seed in (21, 22, 23)]


@pytest.fixture(scope="module")
def pair(directories):
    return load_model(str(directories[0])), load_model(str(directories[1]))


def save_character_model(directory, seed: int):
    """A random Llama over CHARACTERS with a tokenizer that cuts every character (spaces
    included) into its own token."""
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.WordLevel({c: i for i, c in enumerate(CHARACTERS)}, unk_token="<s>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>").save_pretrained(directory)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(CHARACTERS), max_position_embeddings=16,
        bos_token_id=0, eos_token_id=None, pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def character_directory(tmp_path_factory):
    return save_character_model(tmp_path_factory.mktemp("characters") / "chars", seed=24)


def exact_kl(model_i, model_j) -> float:
    """Σ_x p_i(x) (log p_i(x) − log p_j(x)) over every LENGTH-token continuation of the start
    token, log-probs from the scoring engine."""
    sequences = [[0, *rest] for rest in itertools.product(range(len(WORDS)), repeat=LENGTH)]
    tokens = TokenizedTexts.from_sequences(sequences)
    loglik_i = score_tokens(model_i, tokens, progress=False).loglik
    loglik_j = score_tokens(model_j, tokens, progress=False).loglik
    probabilities = np.exp(loglik_i)
    assert abs(probabilities.sum() - 1.0) < 1e-5, "the enumeration must cover the distribution"
    return float(np.sum(probabilities * (loglik_i - loglik_j)))


def test_monte_carlo_kl_matches_the_exact_kl_and_its_error_shrinks(pair):
    model_i, model_j = pair
    exact = exact_kl(model_i, model_j)
    assert exact > 0.05, "the pair must differ for the comparison to mean anything"
    results = {
        count: true_kl(model_i, model_j, samples=count, length=LENGTH, seed=1, batch=count, progress=False)
        for count in (1000, 16000)
    }
    for count, result in results.items():
        print(f"N={count}: {result.nats:.4f} ± {result.nats_se:.4f} nats, exact {exact:.4f}")
        assert result.scored_via == "ids" and result.noncanonical == 0.0
        assert result.samples == count and result.length == LENGTH
        assert abs(result.nats - exact) <= 3 * result.nats_se, (count, result.nats, exact)
        # The sampler's own log-probs agree with the scoring engine's on the same ids.
        assert result.sampler_gap < 1e-4
        np.testing.assert_allclose(result.differences, result.loglik_i - result.loglik_j)
        # "a b c": three one-byte words and two spaces, fewer when a start token was drawn.
        assert 0 < result.mean_bytes <= 5
        assert result.bits_per_byte == pytest.approx(result.nats / result.mean_bytes / np.log(2), rel=1e-12)
    # 16 times the samples: a quarter of the standard error.
    ratio = results[1000].nats_se / results[16000].nats_se
    assert 3.3 < ratio < 4.8, ratio
    # The other direction is another divergence.
    backward = true_kl(model_j, model_i, samples=4000, length=LENGTH, seed=1, batch=4000, progress=False)
    assert abs(backward.nats - exact_kl(model_j, model_i)) <= 3 * backward.nats_se


def test_a_model_against_itself_and_the_detour_through_text(pair):
    model_i, model_j = pair
    same = true_kl(model_i, model_i, samples=64, length=LENGTH, seed=2, progress=False, score_via="ids")
    assert same.nats == 0.0 and same.nats_se == 0.0 and not same.differences.any()
    tokens, _ = draw_samples(model_i, 64, LENGTH, seed=2, batch=32, progress=False)
    # Decoding drops the start tokens drawn after the prompt, so exactly those samples come
    # back as other token sequences.
    noncanonical = (tokens == 0).any(axis=1)
    assert 0 < noncanonical.mean() < 1
    with pytest.warns(UserWarning, match="not its tokenizer's cut"):
        itself = true_kl(model_i, model_i, samples=64, length=LENGTH, seed=2, batch=32, progress=False,
                         score_via="text", max_noncanonical=1)
    # Through text a model against itself differs exactly on the noncanonical samples: its
    # side is the ids as sampled, the other side their re-tokenization (the rest agree up to
    # the rounding of differently packed batches).
    assert itself.noncanonical == pytest.approx(noncanonical.mean())
    np.testing.assert_array_equal(np.abs(itself.differences) > 1e-5, noncanonical)
    with pytest.warns(UserWarning):
        forced = true_kl(model_i, model_j, samples=64, length=LENGTH, seed=2, batch=32, progress=False,
                         score_via="text", max_noncanonical=1)
    assert forced.scored_via == "text" and forced.noncanonical == itself.noncanonical
    # Model i's side is the sampled ids on the text path too, so the sampler checks the engine.
    assert forced.sampler_gap < 1e-4
    with pytest.raises(JaxmapError, match="at least 2 samples"):
        true_kl(model_i, model_j, samples=1, length=LENGTH)
    with pytest.raises(JaxmapError, match="need 17 positions"):
        true_kl(model_i, model_j, samples=4, length=16)
    with pytest.raises(JaxmapError, match=r"max_noncanonical must be a share in \[0, 1\], got 1.5"):
        true_kl(model_i, model_j, samples=4, length=LENGTH, max_noncanonical=1.5)


def exact_text_path(model_i, model_j) -> tuple[float, float, float]:
    """What the text path estimates, enumerated over every LENGTH-token sample y of model i:
    D = Σ_y p_i(y) (log p_i(y) − log p_j(c_j(x))) with x the decoded text and c_j(x) model j's
    tokens of it; the noncanonical mass Σ_y p_i(y) [c_i(x) ≠ y]; and H_i(Y | X), the entropy of
    how model i spells its strings. Log-probs from the scoring engine, tokens from the
    tokenizers themselves."""
    spellings = [list(rest) for rest in itertools.product(range(len(WORDS)), repeat=LENGTH)]
    loglik_i = score_tokens(
        model_i, TokenizedTexts.from_sequences([[0, *y] for y in spellings]), progress=False
    ).loglik
    probabilities = np.exp(loglik_i)
    assert abs(probabilities.sum() - 1.0) < 1e-5, "the enumeration must cover the distribution"
    texts = model_i.tokenizer.batch_decode(spellings, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    cut_j = [[0, *model_j.tokenizer(text, add_special_tokens=False)["input_ids"]] for text in texts]
    loglik_j = score_tokens(model_j, TokenizedTexts.from_sequences(cut_j), progress=False).loglik
    noncanonical = np.array([
        model_i.tokenizer(text, add_special_tokens=False)["input_ids"] != y for text, y in zip(texts, spellings)
    ])
    string_mass: dict[str, float] = {}
    for text, probability in zip(texts, probabilities):
        string_mass[text] = string_mass.get(text, 0.0) + probability
    given_string = probabilities / np.array([string_mass[text] for text in texts])
    return (
        float(np.sum(probabilities * (loglik_i - loglik_j))),
        float(np.sum(probabilities[noncanonical])),
        float(-np.sum(probabilities * np.log(given_string))),
    )


def test_the_text_path_estimates_what_it_documents(pair, character_directory):
    model_i, _ = pair
    characters = load_model(str(character_directory))
    exact, noncanonical, spelling_entropy = exact_text_path(model_i, characters)
    # The case the refusal is for: model i spreads its mass over spellings of its strings.
    assert noncanonical > MAX_NONCANONICAL and spelling_entropy > 0.01
    with pytest.warns(UserWarning, match="not its tokenizer's cut") as warned:
        result = true_kl(model_i, characters, samples=4000, length=LENGTH, seed=3, batch=4000,
                         progress=False, max_noncanonical=1)
    assert len(warned) == 1 and "\n" not in str(warned[0].message)
    print(f"text path: {result.nats:.4f} ± {result.nats_se:.4f} nats, exact D {exact:.4f}, H_i(Y|X) "
          f"{spelling_entropy:.4f}; noncanonical {result.noncanonical:.3f}, exact {noncanonical:.3f}")
    assert result.scored_via == "text" and result.sampler_gap < 1e-4
    assert abs(result.nats - exact) <= 4 * result.nats_se, (result.nats, result.nats_se, exact)
    binomial = np.sqrt(noncanonical * (1 - noncanonical) / result.samples)
    assert abs(result.noncanonical - noncanonical) <= 4 * binomial
    # By default the share refuses, naming itself, the threshold and the override.
    with pytest.raises(JaxmapError, match=r"more than max_noncanonical 0\.1\).*--max-noncanonical") as refused:
        true_kl(model_i, characters, samples=400, length=LENGTH, seed=3, progress=False)
    assert "\n" not in str(refused.value) and "% of the samples from" in str(refused.value)
    with pytest.raises(JaxmapError, match="different tokenizers"):
        true_kl(model_i, characters, samples=16, length=LENGTH, progress=False, score_via="ids")


@pytest.fixture(scope="module")
def store(directories, text_file, tmp_path_factory):
    import jaxmap

    path = tmp_path_factory.mktemp("store") / "map.h5"
    jaxmap.score([str(d) for d in directories[:2]], text_file, out=path, progress=False)
    return path


def _run(argv, capsys) -> tuple[int, str, list[str]]:
    try:
        code = main([str(part) for part in argv])
    except SystemExit as leaving:  # argparse's usage errors
        code = leaving.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def test_the_command_prints_both_estimates(store, directories, capsys):
    first, second = str(directories[0]), str(directories[1])
    code, out, _ = _run(["true-kl", store, first, second, "--samples", "40", "--length", LENGTH, "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["samples"] == 40 and report["length"] == LENGTH and report["scored_via"] == "ids"
    assert report["nats"] > 0 and report["nats_se"] > 0
    assert report["map_estimate"]["nats"] > 0 and report["map_estimate"]["texts"] > 0
    code, out, _ = _run(["true-kl", store, first, second, "--samples", "40", "--length", LENGTH], capsys)
    assert code == 0 and "nats per sampled text" in out and "map's estimate from" in out
    # Another spelling of a stored model's path is that model.
    code, out, _ = _run(["true-kl", store, first + "/.", second, "--samples", "8", "--length", 2], capsys)
    assert code == 0 and "map's estimate from" in out
    # A model reference the store lacks is sampled all the same, without the map's estimate.
    code, out, _ = _run(["true-kl", store, first, directories[2], "--samples", "8", "--length", 2], capsys)
    assert code == 0 and "map's estimate: none" in out


def test_the_command_refuses_noncanonical_samples_unless_told(store, directories, character_directory, capsys):
    # --json: no progress bars on stderr, so the error is its only line.
    arguments = ["true-kl", store, directories[0], character_directory, "--samples", "40", "--length", LENGTH, "--json"]
    code, out, err = _run(arguments, capsys)
    assert code == 2 and not out, (code, out, err)
    assert len(err) == 1 and err[0].startswith("jaxmap true-kl: error:") and "--max-noncanonical" in err[0], err
    with pytest.warns(UserWarning, match="not its tokenizer's cut"):
        code, out, err = _run([*arguments, "--max-noncanonical", "1"], capsys)
    assert code == 0, (code, out, err)
    report = json.loads(out)
    assert report["scored_via"] == "text" and report["noncanonical"] > 0.1 and report["map_estimate"] is None


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{store}", "nosuch-model", "{second}", "--samples", "8"], "unknown model 'nosuch-model'"),
        (["{store}", "{first}", "{second}", "--samples", "1"], "expected an integer of at least 2, got '1'"),
        (["{store}", "{first}", "{second}", "--samples", "8", "--length", "0"], "expected a positive integer"),
        (["{store}", "{first}", "{second}", "--samples", "8", "--length", "40"], "need 41 positions; the model has 16"),
        (["{store}", "{first}", "{second}", "--samples", "eight"], "expected an integer of at least 2"),
        (["{store}", "{first}", "{second}"], "--samples"),
        (["{store}", "{first}", "{second}", "--samples", "8", "--max-noncanonical", "1.5"], "expected a share in [0, 1], got '1.5'"),
        (["{store}.missing", "{first}", "{second}", "--samples", "8"], ".missing"),
    ],
)
def test_wrong_input_gets_one_line(arguments, message, store, directories, capsys):
    values = {"store": store, "first": directories[0], "second": directories[1]}
    code, out, err = _run(["true-kl", *(a.format(**values) for a in arguments)], capsys)
    assert code == 2, (code, out, err)
    assert len(err) == 1 and err[0].startswith("jaxmap true-kl: error:"), err
    assert message in err[0], err
