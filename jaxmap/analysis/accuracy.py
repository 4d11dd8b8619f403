"""Multiple-choice accuracy from a store: lm-evaluation-harness's ``acc`` and ``acc_norm``.

A text set groups continuations into questions: every text whose metadata has a
``question_id`` is one choice of that question, and exactly one choice per question has
``gold: true``. The store's value of a text is log p(continuation | context), the
loglikelihood lm-evaluation-harness compares (docs/method.md, "Multiple-choice accuracy").

For each model and question the prediction is the choice with the highest score:

- ``acc``: the log-likelihood itself (lm-eval's ``acc``);
- ``acc_norm``: the log-likelihood divided by the continuation's UTF-8 bytes, the separating
  space included (what issue 23 asks for; tokenizer-independent, like lm-eval's);
- ``acc_norm_chars``: lm-eval's own ``acc_norm`` rule, the log-likelihood divided by the
  number of characters of the choice, i.e. the continuation without its one leading space
  (lm-eval scores ``" " + choice`` and divides by ``len(choice)``).

Ties go to the first choice in file order, as ``np.argmax`` (and so lm-eval) does. Each
accuracy comes with its binomial standard error sqrt(p(1 - p) / n) over the n questions.
Functions here are pure: numpy in, numpy out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import AnalysisError

__all__ = [
    "AccuracyResult",
    "Question",
    "QuestionError",
    "accuracy",
    "continuation_lengths",
    "question_groups",
    "store_accuracy",
]

# The scores compared, in the order they are reported.
METRICS = ("acc", "acc_norm", "acc_norm_chars")


class QuestionError(AnalysisError):
    """A text set whose questions cannot be scored; the message names the question."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: its id, the positions of its choices in the text set (in
    file order) and which of them is gold (an index into ``choices``)."""

    question_id: str
    choices: tuple[int, ...]
    gold: int

    @property
    def gold_text(self) -> int:
        """The position in the text set of the gold choice."""
        return self.choices[self.gold]


@dataclass(frozen=True)
class AccuracyResult:
    """Per-model accuracies (fractions in [0, 1], as lm-eval reports them) over ``questions``
    questions. ``skipped`` lists the questions left out for missing log-likelihoods (with
    ``missing="skip"``), the same for every model so that the accuracies stay comparable."""

    models: tuple[str, ...]
    questions: int
    acc: np.ndarray
    acc_norm: np.ndarray
    acc_norm_chars: np.ndarray
    skipped: tuple[str, ...] = ()

    def stderr(self, metric: str) -> np.ndarray:
        """The binomial standard error sqrt(p(1 - p) / n) of ``metric`` for every model."""
        p = getattr(self, metric)
        return np.sqrt(p * (1.0 - p) / self.questions)

    def rows(self) -> list[dict]:
        """One dict per model: ``model``, ``questions`` and each metric with its ``_stderr``."""
        rows = []
        for k, model in enumerate(self.models):
            row: dict = {"model": model, "questions": self.questions}
            for metric in METRICS:
                row[metric] = float(getattr(self, metric)[k])
                row[f"{metric}_stderr"] = float(self.stderr(metric)[k])
            rows.append(row)
        return rows


def _question_key(value, text_id: str, source: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, np.integer)):
        raise QuestionError(
            f"{source}: text {text_id!r} has question_id {value!r}; a question_id is a string or an integer"
        )
    return str(value)


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def question_groups(text_set) -> tuple[Question, ...]:
    """The questions of ``text_set`` (a :class:`~jaxmap.texts.TextSet`), in order of first
    appearance, each with its choices in file order.

    A text takes part when its metadata has a ``question_id`` (a string or integer; ``1`` and
    ``"1"`` are one question); texts without one are ignored. Raises :class:`QuestionError`,
    one line naming the set and the question, when a choice has no ``gold`` or a ``gold`` that
    is not true/false, a question has fewer than 2 choices or not exactly one gold, a choice's
    continuation is empty, or no text has a question_id at all.
    """
    source = getattr(text_set, "source", "<memory>")
    metadata = text_set.metadata or tuple({} for _ in text_set.texts)
    members: dict[str, list[int]] = {}
    for position, meta in enumerate(metadata):
        key = _question_key((meta or {}).get("question_id"), text_set.ids[position], source)
        if key is not None:
            members.setdefault(key, []).append(position)
    if not members:
        raise QuestionError(
            f"{source}: no text has a question_id; accuracy needs a multiple-choice text set "
            "(lines with question_id and gold; `jaxmap questions` builds one)"
        )
    questions, problems = [], []
    for key, positions in members.items():
        ids = [text_set.ids[p] for p in positions]
        golds = [metadata[p].get("gold") for p in positions]
        bad = [(i, g) for i, g in zip(ids, golds) if not _is_bool(g)]
        empty = [i for i, p in zip(ids, positions) if not text_set.texts[p]]
        chosen = [i for i, g in zip(ids, golds) if _is_bool(g) and g]
        if bad:
            text_id, value = bad[0]
            what = "no gold" if value is None else f"gold {value!r}"
            problems.append(f"question {key!r}: choice {text_id!r} has {what}; gold must be true or false")
        elif len(positions) < 2:
            problems.append(f"question {key!r} has 1 choice ({ids[0]!r}); a question needs at least 2")
        elif len(chosen) != 1:
            listed = f" ({', '.join(map(repr, chosen))})" if chosen else ""
            problems.append(f"question {key!r} has {len(chosen)} gold choices{listed}; exactly one must be gold")
        elif empty:
            problems.append(f"question {key!r}: choice {empty[0]!r} has an empty continuation")
        else:
            gold = next(i for i, g in enumerate(golds) if g)
            questions.append(Question(key, tuple(positions), gold))
    if problems:
        more = f" (and {len(problems) - 1} more questions with problems)" if len(problems) > 1 else ""
        raise QuestionError(f"{source}: {problems[0]}{more}")
    return tuple(questions)


def continuation_lengths(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each continuation's UTF-8 bytes (what ``acc_norm`` divides by) and lm-eval's character
    length of its choice: the characters after one leading space (what ``acc_norm_chars``
    divides by; a choice that is only that space counts 1)."""
    byte_lengths = np.array([len(text.encode("utf-8")) for text in texts], dtype=np.float64)
    chars = np.array(
        [max(len(text) - text.startswith(" "), 1) for text in texts], dtype=np.float64
    )
    return byte_lengths, chars


def _first_argmax(scores: np.ndarray) -> np.ndarray:
    """np.argmax along the last axis: the first of tied maxima."""
    return np.argmax(scores, axis=-1)


def accuracy(
    loglik,
    groups: Sequence[Question],
    continuation_bytes,
    continuation_chars=None,
    *,
    models: Sequence[str] | None = None,
    text_ids: Sequence[str] | None = None,
    missing: str = "refuse",
) -> AccuracyResult:
    """Each model's multiple-choice accuracy from its log-likelihoods.

    Args:
        loglik: K×N log p(continuation | context), one row per model, columns as in the text set
            the ``groups`` come from (:func:`question_groups`).
        groups: the questions.
        continuation_bytes: N UTF-8 lengths of the continuations (:func:`continuation_lengths`).
        continuation_chars: N lm-eval character lengths, for ``acc_norm_chars``; default: the
            bytes, which is the same for ASCII choices with no leading space.
        models: K model names (default ``model_0`` ...).
        text_ids: N text ids, only to name texts in errors.
        missing: what a NaN log-likelihood (a text missing from a row) does: ``"refuse"``
            (default) raises :class:`QuestionError` naming the model and question; ``"skip"``
            leaves out, for every model, each question with a NaN for any model.

    Returns:
        :class:`AccuracyResult` with ``acc``, ``acc_norm`` and ``acc_norm_chars`` per model.
    """
    loglik = np.asarray(loglik, dtype=np.float64)
    if loglik.ndim == 1:
        loglik = loglik[None, :]
    if loglik.ndim != 2:
        raise AnalysisError(f"expected a K×N log-likelihood matrix, got shape {loglik.shape}")
    n_models, n_texts = loglik.shape
    names = tuple(models) if models is not None else tuple(f"model_{k}" for k in range(n_models))
    if len(names) != n_models:
        raise AnalysisError(f"{n_models} rows of log-likelihoods but {len(names)} model names")
    byte_lengths = np.asarray(continuation_bytes, dtype=np.float64)
    char_lengths = byte_lengths if continuation_chars is None else np.asarray(continuation_chars, np.float64)
    for what, lengths in (("continuation_bytes", byte_lengths), ("continuation_chars", char_lengths)):
        if lengths.shape != (n_texts,):
            raise AnalysisError(f"{n_texts} texts but {lengths.size} {what}")
    if missing not in ("refuse", "skip"):
        raise AnalysisError(f"missing must be 'refuse' or 'skip', got {missing!r}")
    if not groups:
        raise QuestionError("no questions to score")
    ids = list(text_ids) if text_ids is not None else [str(i) for i in range(n_texts)]
    if np.isposinf(loglik).any():
        model = int(np.flatnonzero(np.isposinf(loglik).any(axis=1))[0])
        raise AnalysisError(f"{names[model]}: +inf log-likelihoods (probabilities above 1)")

    kept, skipped = [], []
    for question in groups:
        if max(question.choices) >= n_texts:
            raise AnalysisError(f"question {question.question_id!r} names text {max(question.choices)} of {n_texts}")
        values = loglik[:, question.choices]
        if np.isnan(values).any():
            if missing == "skip":
                skipped.append(question.question_id)
                continue
            model, choice = (int(v[0]) for v in np.nonzero(np.isnan(values)))
            total = sum(bool(np.isnan(loglik[:, q.choices]).any()) for q in groups)
            raise QuestionError(
                f"{names[model]} has no log-likelihood for text {ids[question.choices[choice]]!r} "
                f"(question {question.question_id!r}; {total} of {len(groups)} questions have a "
                "missing value); score the missing texts, or skip those questions"
            )
        kept.append(question)
    if not kept:
        raise QuestionError(f"all {len(groups)} questions have a missing log-likelihood; none to score")

    correct = {metric: np.zeros(n_models) for metric in METRICS}
    for question in kept:
        choices = np.asarray(question.choices)
        values = loglik[:, choices]
        for metric, scores in (
            ("acc", values),
            ("acc_norm", values / byte_lengths[choices]),
            ("acc_norm_chars", values / char_lengths[choices]),
        ):
            correct[metric] += _first_argmax(scores) == question.gold
    n = len(kept)
    return AccuracyResult(
        models=names,
        questions=n,
        acc=correct["acc"] / n,
        acc_norm=correct["acc_norm"] / n,
        acc_norm_chars=correct["acc_norm_chars"] / n,
        skipped=tuple(skipped),
    )


def _text_set_of(store):
    text_set = store.text_set
    return text_set() if callable(text_set) else text_set


def store_accuracy(store, *, missing: str = "refuse") -> AccuracyResult:
    """:func:`accuracy` of every model of a store, with the questions of its text set.

    ``store`` is a path (opened with :func:`jaxmap.store.open_store`) or a
    :class:`~jaxmap.store.Store`. Errors name the store: not a store, a store whose texts have
    no questions, a question without exactly one gold, a missing log-likelihood.
    """
    from ..store import open_store

    if not hasattr(store, "loglik"):
        store = open_store(store)
    text_set = _text_set_of(store)
    source = str(store.path)
    try:
        groups = question_groups(text_set)
        byte_lengths, chars = continuation_lengths(text_set.texts)
        return accuracy(
            store.loglik, groups, byte_lengths, chars,
            models=store.models, text_ids=store.text_ids, missing=missing,
        )
    except AnalysisError as error:
        message = str(error)
        raise type(error)(message if message.startswith(source) else f"{source}: {message}") from None
