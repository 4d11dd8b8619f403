"""The true KL between two models, by Monte Carlo: sample from one, score under both.

KL(p_i ‖ p_j) = E_{x∼p_i}[log p_i(x) − log p_j(x)]. Texts are sampled from model i after its
start token (the ``full`` BOS policy's first token), ``length`` tokens each, at temperature 1
from the full softmax (:func:`jaxmap.models.generation.sample`); the mean of the per-sample
differences estimates the KL in nats per sampled text, with the standard error of that mean.
Bits per byte divide by the mean UTF-8 bytes of the sampled texts (a ratio estimator; its
error by the delta method) and by ln 2.

Both log-probabilities come from the scoring engine (:func:`jaxmap.engine.score_tokens`), the
one that fills the map's store, so the two sides are measured the same way:

* **same tokenizer** (equal fingerprints): the sampled ids are scored directly under both
  models. The estimate is then unbiased for the KL between the models' distributions over
  ``length``-token continuations of the start token. The sampler's own log-probabilities are
  kept to check the engine against (``sampler_gap``).
* **different tokenizers**: the samples are decoded to text (special tokens dropped). Model i
  scores each sample as the ids it was drawn as, model j its own tokenizer's cut of the text
  under the ``full`` policy. With y the sampled ids, x their text and c_j(x) j's tokens, the
  mean estimates D = E_{y∼p_i}[log p_i(y) − log p_j(c_j(x))] without bias, and

      D = KL_str − H_i(Y | X) + E[log P_j(X) − log p_j(c_j(X))],

  with P(x) a model's probability of spelling the string x (the sum over every tokenization
  of it: for i, its ``length``-token ones; for j, any, a prefix probability) and
  KL_str = E[log P_i(X) − log P_j(X)]. The i side, log p_i(y) ≤ log P_i(x), falls short by
  H_i(Y | X) ≥ 0, the entropy of how model i spelled its strings; the j side, one
  tokenization of the sum, adds j's shortfall ≥ 0. So D bounds the string KL neither way and
  can be negative; it is the string KL when every string i samples has one spelling i gives
  mass to and j puts all its mass on its tokenizer's own cuts (docs/method.md).
  Exact log P_i(x) would sum over every spelling, exponentially many, with no shared work in a
  transformer; it is not attempted. ``noncanonical``, the share of samples whose ids are not
  model i's own cut of their text, estimates i's mass on the spellings that make H_i(Y | X)
  positive: above :data:`WARN_NONCANONICAL` it warns, above ``max_noncanonical`` (default
  :data:`MAX_NONCANONICAL`) it refuses before scoring.

Caveats. The texts are fixed-length prefixes: ``length`` tokens of model i, whatever bytes
they spell, so the KL is over prefixes of i's token count (which covers different amounts of
text in j's tokens) rather than over whole documents; an end-of-text token sampled midway is
continued past, as the model does in a stream of documents. The map's estimate is per text of
the map's own text set, so compare the two in bits per byte, not nats per text.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import jax
import numpy as np
from tqdm.auto import tqdm

from ..errors import JaxmapError
from ..texts import TextSet
from ..tokenization import TokenizedTexts, start_token, tokenize, tokenizer_fingerprint

# Samples drawn per compiled sampler call: enough rows to keep the matmuls busy on CPU while a
# call stays a few seconds for a 100M-parameter model.
DEFAULT_BATCH = 32
SCORE_VIA = ("auto", "ids", "text")
# Shares of noncanonical samples (text path), beyond which H_i(Y | X) is worth a warning and,
# unmeasured, a refusal unless asked for: random models reach about half (their estimate went
# below zero), and the packaged models measured 11-27% at 32 tokens (special tokens dropped by
# the decoding, byte-level pieces), so those pairs need the override too.
WARN_NONCANONICAL = 0.02
MAX_NONCANONICAL = 0.10


@dataclass(frozen=True)
class TrueKL:
    """A Monte Carlo estimate of KL(p_i ‖ p_j) and what it was computed from.

    ``nats`` ± ``nats_se``: nats per sampled text; ``bits_per_byte`` ± ``bits_per_byte_se``.
    ``samples`` texts of ``length`` tokens, ``mean_bytes`` UTF-8 bytes on average.
    ``scored_via``: ``"ids"`` (one tokenizer: the sampled ids scored by both) or ``"text"``
    (the sampled ids by model i, the decoded text as model j cuts it). ``noncanonical``: the
    share of samples model i's tokenizer cuts differently from how they were sampled (0 via
    ids). ``differences``: every sample's log p_i − log p_j (nats); ``loglik_i``,
    ``loglik_j``: the two sides. ``sampler_gap``: the largest |sampler's log p_i − engine's|
    over the samples.
    """

    model_i: str
    model_j: str
    nats: float
    nats_se: float
    bits_per_byte: float
    bits_per_byte_se: float
    samples: int
    length: int
    mean_bytes: float
    scored_via: str
    noncanonical: float
    differences: np.ndarray
    loglik_i: np.ndarray
    loglik_j: np.ndarray
    sampler_gap: float
    seed: int
    seconds: float

    def summary(self) -> dict:
        """The scalar fields, for JSON."""
        return {
            name: getattr(self, name)
            for name in (
                "model_i", "model_j", "nats", "nats_se", "bits_per_byte", "bits_per_byte_se",
                "samples", "length", "mean_bytes", "scored_via", "noncanonical", "sampler_gap",
                "seed", "seconds",
            )
        }


def _loaded(model):
    from ..engine import LoadedModel, load_model

    return model if isinstance(model, LoadedModel) else load_model(model)


def draw_samples(
    model, samples: int, length: int, seed: int = 0, batch: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` continuations of ``length`` tokens after the model's start token, at
    temperature 1: tokens [samples, length] int32 and their log-probs under the sampler
    (float32). Drawn ``batch`` at a time (one compilation); batch b uses the key
    ``fold_in(key(seed), b)``, so a run is reproducible for a given seed and batch."""
    from ..models.generation import check_length, sample

    model = _loaded(model)
    check_length(model.config, 1 + length)
    batch = min(batch or DEFAULT_BATCH, samples)
    start = start_token(model.tokenizer)
    prompt = np.full((batch, 1), start, np.int32)
    root = jax.random.key(seed)
    tokens, logprobs = [], []
    calls = -(-samples // batch)
    for index in tqdm(range(calls), desc=f"sampling {model.reference}", unit="batch",
                      leave=False, disable=not progress):
        drawn, logprob = sample(model.params, model.config, prompt, length, jax.random.fold_in(root, index))
        tokens.append(np.asarray(drawn))
        logprobs.append(np.asarray(logprob))
    return np.concatenate(tokens)[:samples], np.concatenate(logprobs)[:samples]


def _check_context(model, tokens: TokenizedTexts, length: int) -> None:
    longest = int(tokens.lengths.max())
    if longest > model.config.max_positions:
        raise JaxmapError(
            f"{model.reference}: a sample of {length} tokens re-tokenizes to {longest} tokens, "
            f"beyond its context of {model.config.max_positions}; sample fewer tokens"
        )


def _check_noncanonical(reference: str, share: float, most: float) -> None:
    """Warn when ``share`` of the samples are noncanonical, refuse above ``most``: both mean
    the text path's estimate is pulled down by the entropy of model i's spellings."""
    if share > most:
        raise JaxmapError(
            f"{share:.1%} of the samples from {reference} are not its tokenizer's cut of their "
            f"text (more than max_noncanonical {most:g}): the text path's estimate would be "
            "biased down by the entropy of their spellings and can go negative; raise "
            "max_noncanonical (--max-noncanonical) to estimate it anyway"
        )
    if share > WARN_NONCANONICAL:
        warnings.warn(
            f"{share:.1%} of the samples from {reference} are not its tokenizer's cut of their "
            "text: the estimate is biased down by the entropy of their spellings",
            stacklevel=3,
        )


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float]:
    """mean(numerator) / mean(denominator) and its standard error (delta method)."""
    mean = float(denominator.mean())
    if not mean > 0:
        return float("nan"), float("nan")
    ratio = float(numerator.mean()) / mean
    residual = numerator - ratio * denominator
    return ratio, float(residual.std(ddof=1) / np.sqrt(len(numerator)) / mean)


def true_kl(
    model_i,
    model_j,
    samples: int = 256,
    length: int = 64,
    seed: int = 0,
    batch: int | None = None,
    progress: bool = True,
    score_via: str = "auto",
    batch_tokens: int | None = None,
    max_noncanonical: float = MAX_NONCANONICAL,
) -> TrueKL:
    """Estimate KL(p_i ‖ p_j) by sampling ``samples`` texts of ``length`` tokens from
    ``model_i`` and scoring them under both models (see the module docstring).

    ``model_i``, ``model_j``: :class:`~jaxmap.engine.LoadedModel` or model references (loaded
    in float32). ``batch``: samples per sampler call (default 32). ``score_via``: ``"auto"``
    scores ids directly when the tokenizers match and decoded text otherwise; ``"text"`` forces
    the detour through text, ``"ids"`` refuses models whose tokenizers differ.
    ``batch_tokens``: the scoring engine's padded tokens per batch (default: its own).
    ``max_noncanonical``: via text, the largest share of noncanonical samples estimated from
    (default 0.1; 1 never refuses); above it the estimate is refused before scoring.
    """
    if samples < 2:
        raise JaxmapError(f"a standard error needs at least 2 samples, got {samples}")
    if length < 1:
        raise JaxmapError(f"length must be at least 1 token, got {length}")
    if batch is not None and batch < 1:
        raise JaxmapError(f"batch must be at least 1, got {batch}")
    if score_via not in SCORE_VIA:
        raise JaxmapError(f"unknown score_via {score_via!r}; choose one of {', '.join(SCORE_VIA)}")
    if not 0 <= max_noncanonical <= 1:
        raise JaxmapError(f"max_noncanonical must be a share in [0, 1], got {max_noncanonical}")
    from ..engine import score_tokens
    from ..scoring_options import ScoringOptions

    options = ScoringOptions(batch_tokens=batch_tokens)  # a bad one fails before any sampling
    started = time.perf_counter()
    model_i, model_j = _loaded(model_i), _loaded(model_j)
    same = tokenizer_fingerprint(model_i.tokenizer, "full") == tokenizer_fingerprint(model_j.tokenizer, "full")
    if score_via == "ids" and not same:
        raise JaxmapError(
            f"{model_i.reference} and {model_j.reference} have different tokenizers: "
            "their samples can only be compared as text"
        )
    via = "ids" if same and score_via != "text" else "text"
    tokens, sampler_logprobs = draw_samples(model_i, samples, length, seed, batch, progress)
    texts = model_i.tokenizer.batch_decode(
        tokens.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    text_bytes = np.array([len(text.encode("utf-8")) for text in texts], np.float64)
    start = start_token(model_i.tokenizer)
    sampled = TokenizedTexts.from_sequences([[start, *row] for row in tokens.tolist()])
    noncanonical = 0.0
    # Model i scores the ids it drew on both paths: its side is then the exact log p_i(y) of
    # the sampled sequence, not of a re-tokenization it may never have drawn.
    tokens_j = sampled
    if via == "text":
        # Built directly: a sample may hold characters (NUL) a stored text set refuses, and
        # these texts are never stored.
        text_set = TextSet(tuple(str(k) for k in range(samples)), tuple(texts))
        tokens_j = tokenize(text_set, model_j.tokenizer, "full")
        canonical = tokenize(text_set, model_i.tokenizer, "full")
        noncanonical = float(np.mean([
            not np.array_equal(canonical[k], sampled[k]) for k in range(samples)
        ]))
        _check_noncanonical(model_i.reference, noncanonical, max_noncanonical)
    _check_context(model_j, tokens_j, length)
    loglik_i = score_tokens(model_i, sampled, progress=progress, options=options).loglik
    loglik_j = score_tokens(model_j, tokens_j, progress=progress, options=options).loglik
    differences = loglik_i - loglik_j
    sampler_gap = float(np.abs(sampler_logprobs.astype(np.float64).sum(axis=1) - loglik_i).max())
    per_byte, per_byte_se = _ratio(differences, text_bytes)
    return TrueKL(
        model_i=model_i.reference,
        model_j=model_j.reference,
        nats=float(differences.mean()),
        nats_se=float(differences.std(ddof=1) / np.sqrt(samples)),
        bits_per_byte=per_byte / np.log(2.0),
        bits_per_byte_se=per_byte_se / np.log(2.0),
        samples=samples,
        length=length,
        mean_bytes=float(text_bytes.mean()),
        scored_via=via,
        noncanonical=noncanonical,
        differences=differences,
        loglik_i=loglik_i,
        loglik_j=loglik_j,
        sampler_gap=sampler_gap,
        seed=seed,
        seconds=time.perf_counter() - started,
    )
