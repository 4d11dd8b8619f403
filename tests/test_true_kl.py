"""The Monte Carlo KL (jaxmap.analysis.true_kl) against the exact KL of a model pair whose text
distribution can be enumerated, its standard error's 1/sqrt(N) shrinkage, the detour through
text for different tokenizers, and the `jaxmap true-kl` command, wrong inputs included."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import transformers

from conftest import save_random_model
from jaxmap.analysis.true_kl import draw_samples, true_kl
from jaxmap.cli import main
from jaxmap.engine import load_model, score_tokens
from jaxmap.errors import JaxmapError
from jaxmap.tokenization import TokenizedTexts
from test_generation import WORDS, save_small_vocab_model

LENGTH = 3


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    root = tmp_path_factory.mktemp("true-kl")
    return [save_small_vocab_model(root / f"m{seed}", seed=seed) for seed in (21, 22, 23)]


@pytest.fixture(scope="module")
def pair(directories):
    return load_model(str(directories[0])), load_model(str(directories[1]))


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
    for via in ("ids", "text"):
        same = true_kl(model_i, model_i, samples=64, length=LENGTH, seed=2, progress=False, score_via=via)
        assert same.nats == 0.0 and same.nats_se == 0.0 and not same.differences.any()
    tokens, _ = draw_samples(model_i, 64, LENGTH, seed=2, batch=32, progress=False)
    forced = true_kl(model_i, model_j, samples=64, length=LENGTH, seed=2, batch=32, progress=False, score_via="text")
    assert forced.scored_via == "text" and forced.sampler_gap is None
    # Decoding drops the start tokens drawn after the prompt, so exactly those samples come
    # back as other token sequences.
    assert forced.noncanonical == pytest.approx(np.mean((tokens == 0).any(axis=1)))
    assert 0 < forced.noncanonical < 1
    with pytest.raises(JaxmapError, match="at least 2 samples"):
        true_kl(model_i, model_j, samples=1, length=LENGTH)
    with pytest.raises(JaxmapError, match="need 17 positions"):
        true_kl(model_i, model_j, samples=4, length=16)


def test_different_tokenizers_compare_as_text(pair, tmp_path):
    model_i, _ = pair
    other = load_model(str(save_random_model(tmp_path / "bpe", transformers.GPT2Config(
        n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=300), seed=4)))
    result = true_kl(model_i, other, samples=16, length=LENGTH, progress=False)
    assert result.scored_via == "text" and np.isfinite(result.nats) and result.nats > 0
    with pytest.raises(JaxmapError, match="different tokenizers"):
        true_kl(model_i, other, samples=16, length=LENGTH, progress=False, score_via="ids")


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


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["{store}", "nosuch-model", "{second}", "--samples", "8"], "unknown model 'nosuch-model'"),
        (["{store}", "{first}", "{second}", "--samples", "1"], "expected an integer of at least 2, got '1'"),
        (["{store}", "{first}", "{second}", "--samples", "8", "--length", "0"], "expected a positive integer"),
        (["{store}", "{first}", "{second}", "--samples", "8", "--length", "40"], "need 41 positions; the model has 16"),
        (["{store}", "{first}", "{second}", "--samples", "eight"], "expected an integer of at least 2"),
        (["{store}", "{first}", "{second}"], "--samples"),
        (["{store}.missing", "{first}", "{second}", "--samples", "8"], ".missing"),
    ],
)
def test_wrong_input_gets_one_line(arguments, message, store, directories, capsys):
    values = {"store": store, "first": directories[0], "second": directories[1]}
    code, out, err = _run(["true-kl", *(a.format(**values) for a in arguments)], capsys)
    assert code == 2, (code, out, err)
    assert len(err) == 1 and err[0].startswith("jaxmap true-kl: error:"), err
    assert message in err[0], err
