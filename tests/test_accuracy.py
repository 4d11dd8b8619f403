"""Multiple-choice accuracy (jaxmap.analysis.accuracy, `jaxmap accuracy`): against a plain
numpy computation, lm-eval's tie rule, the validation of questions, missing values, and the
CSV read back by `jaxmap predict`."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import jaxmap
from jaxmap.analysis.accuracy import (
    QuestionError,
    accuracy,
    continuation_lengths,
    question_groups,
    store_accuracy,
)
from jaxmap.cli import main
from jaxmap.store import StoreWriter, open_store
from jaxmap.texts import TextSet


def _question_set(rng, n_questions=40, extra=10):
    """A text set of questions with 2–5 choices, interleaved with each other and with plain
    texts, plus the expected grouping: question id -> (positions in file order, gold index)."""
    entries = []
    for q in range(n_questions):
        n_choices = int(rng.integers(2, 6))
        gold = int(rng.integers(n_choices))
        for c in range(n_choices):
            words = " ".join(["é" if rng.random() < 0.2 else "word"] * int(rng.integers(1, 12)))
            qid = q if q % 3 == 0 else f"q{q}"  # integer and string ids
            entries.append((f"{q}-{c}", " " + words, {"question_id": qid, "gold": c == gold}))
    for e in range(extra):
        entries.append((f"plain-{e}", "a text without a question", {"domain": "x"}))
    order = rng.permutation(len(entries))
    entries = [entries[i] for i in order]
    ids, texts, meta = zip(*entries)
    expected: dict[str, tuple[list[int], int]] = {}
    for position, m in enumerate(meta):
        if "question_id" in m:
            key = str(m["question_id"])
            positions, gold = expected.setdefault(key, ([], -1))
            if m["gold"]:
                gold = len(positions)
            positions.append(position)
            expected[key] = (positions, gold)
    return TextSet(tuple(ids), tuple(texts), tuple(meta)), expected


def _reference(loglik, expected, lengths):
    """Accuracy by explicit loops: the first choice with the highest score wins."""
    correct = np.zeros(loglik.shape[0])
    for positions, gold in expected.values():
        for k in range(loglik.shape[0]):
            scores = [loglik[k, p] / lengths[p] for p in positions]
            best = 0
            for i, score in enumerate(scores):
                if score > scores[best]:
                    best = i
            correct[k] += best == gold
    return correct / len(expected)


def test_accuracy_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    text_set, expected = _question_set(rng)
    groups = question_groups(text_set)
    assert [q.question_id for q in groups] == list(expected)
    assert [(list(q.choices), q.gold) for q in groups] == list(expected.values())
    loglik = -rng.gamma(3, 10, (7, len(text_set)))
    loglik[:, ::5] = np.round(loglik[:, ::5])  # some ties
    byte_lengths, chars = continuation_lengths(text_set.texts)
    result = accuracy(loglik, groups, byte_lengths, chars, models=[f"m{k}" for k in range(7)])
    ones = np.ones(len(text_set))
    utf8 = np.array([len(t.encode()) for t in text_set.texts], float)
    lm_eval_chars = np.array([len(t[1:]) if t.startswith(" ") else len(t) for t in text_set.texts], float)
    np.testing.assert_array_equal(result.acc, _reference(loglik, expected, ones))
    np.testing.assert_array_equal(result.acc_norm, _reference(loglik, expected, utf8))
    np.testing.assert_array_equal(result.acc_norm_chars, _reference(loglik, expected, lm_eval_chars))
    assert result.questions == len(expected) and result.models == tuple(f"m{k}" for k in range(7))
    p = result.acc
    np.testing.assert_allclose(result.stderr("acc"), np.sqrt(p * (1 - p) / len(expected)))
    row = result.rows()[0]
    assert row["model"] == "m0" and row["acc"] == result.acc[0] and row["questions"] == len(expected)


def test_ties_go_to_the_first_choice_in_file_order():
    meta = [{"question_id": "q", "gold": g} for g in (False, True, False)]
    text_set = TextSet(("a", "b", "c"), (" xx", " xx", " xx"), tuple(meta))
    groups = question_groups(text_set)
    tied = np.array([[-5.0, -5.0, -9.0], [-9.0, -5.0, -5.0], [-5.0, -9.0, -5.0]])
    result = accuracy(tied, groups, *continuation_lengths(text_set.texts))
    # row 0: a and b tie, a comes first: wrong; row 1: b and c tie, b first: right; row 2: a.
    np.testing.assert_array_equal(result.acc, [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(result.acc_norm, [0.0, 1.0, 0.0])


def test_bytes_and_characters_normalise_differently():
    # " ééé" is 7 bytes and 3 characters of choice; " abcd" 5 bytes and 4 characters.
    meta = ({"question_id": 1, "gold": True}, {"question_id": 1, "gold": False})
    text_set = TextSet(("gold", "other"), (" ééé", " abcd"), meta)
    byte_lengths, chars = continuation_lengths(text_set.texts)
    np.testing.assert_array_equal(byte_lengths, [7, 5])
    np.testing.assert_array_equal(chars, [3, 4])
    loglik = np.array([[-6.0, -5.0]])  # per byte -0.857 vs -1.0: gold; per char -2 vs -1.25: other
    result = accuracy(loglik, question_groups(text_set), byte_lengths, chars)
    assert (result.acc[0], result.acc_norm[0], result.acc_norm_chars[0]) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize(
    "meta, texts, expected",
    [
        ([{"question_id": "q1", "gold": True}, {"question_id": "q1"}], None,
         "question 'q1': choice 'b' has no gold; gold must be true or false"),
        ([{"question_id": "q1", "gold": True}, {"question_id": "q1", "gold": 0}], None,
         "choice 'b' has gold 0"),
        ([{"question_id": "q1", "gold": True}, {"question_id": "q2", "gold": True}], None,
         "question 'q1' has 1 choice ('a'); a question needs at least 2"),
        ([{"question_id": "q1", "gold": True}, {"question_id": "q1", "gold": True}], None,
         "question 'q1' has 2 gold choices ('a', 'b'); exactly one must be gold"),
        ([{"question_id": "q1", "gold": False}, {"question_id": "q1", "gold": False}], None,
         "question 'q1' has 0 gold choices; exactly one must be gold"),
        ([{"question_id": 1.5, "gold": False}, {}], None, "question_id 1.5; a question_id is a string"),
        ([{}, {"domain": "x"}], None, "no text has a question_id"),
        ([{"question_id": "q1", "gold": True}, {"question_id": "q1", "gold": False}], ("x", ""),
         "question 'q1': choice 'b' has an empty continuation"),
    ],
    ids=["no-gold", "gold-not-bool", "one-choice", "two-golds", "no-gold-choice", "bad-id", "none", "empty"],
)
def test_bad_questions_are_one_line_naming_the_question(meta, texts, expected):
    text_set = TextSet(("a", "b"), texts or (" x", " y"), tuple(meta), source="set.jsonl")
    with pytest.raises(QuestionError) as caught:
        question_groups(text_set)
    message = str(caught.value)
    assert expected in message and message.startswith("set.jsonl: ") and "\n" not in message


def test_several_bad_questions_are_counted_in_the_one_line():
    meta = [{"question_id": q, "gold": True} for q in ("a", "b", "c")]
    with pytest.raises(QuestionError, match=r"question 'a' has 1 choice .*\(and 2 more questions with problems\)"):
        question_groups(TextSet(("1", "2", "3"), (" x", " y", " z"), tuple(meta)))


def test_a_missing_log_likelihood_is_refused_or_skipped_for_every_model():
    meta = [{"question_id": f"q{i // 2}", "gold": i % 2 == 0} for i in range(6)]
    text_set = TextSet(tuple("abcdef"), tuple(" t" for _ in range(6)), tuple(meta))
    groups = question_groups(text_set)
    loglik = np.array([[-1.0, -2, -1, -2, -2, -1], [-1, -2, -1, np.nan, -1, -2]])
    lengths = continuation_lengths(text_set.texts)
    with pytest.raises(QuestionError, match=r"m1 has no log-likelihood for text 'd' \(question 'q1'; 1 of 3"):
        accuracy(loglik, groups, *lengths, models=["m0", "m1"], text_ids=text_set.ids)
    result = accuracy(loglik, groups, *lengths, models=["m0", "m1"], missing="skip")
    assert result.skipped == ("q1",) and result.questions == 2
    np.testing.assert_array_equal(result.acc, [0.5, 1.0])  # q0 and q2 only, for both models
    with pytest.raises(QuestionError, match="all 1 questions have a missing"):
        accuracy(np.full((1, 6), np.nan), groups[:1], *lengths, missing="skip")


def _question_store(path, n_models=10, n_questions=30, seed=0, with_metadata=True):
    """A store of a conditional question set (contexts, question_id, gold), scored by fake
    models of increasing skill; returns the store's path and the expected acc of each model."""
    rng = np.random.default_rng(seed)
    ids, contexts, texts, meta = [], [], [], []
    for q in range(n_questions):
        for c in range(4):
            ids.append(f"q{q}/{'abcd'[c]}")
            contexts.append(f"Context of question {q}.")
            texts.append(" choice" + "s" * c)
            meta.append({"question_id": f"q{q}", "gold": c == q % 4, "domain": "test"} if with_metadata else {})
    text_set = TextSet(tuple(ids), tuple(texts), tuple(meta), contexts=tuple(contexts))
    writer = StoreWriter(path, text_set, {"dtype": "float32", "bos_policy": "full"})
    expected = []
    for k in range(n_models):
        row = -rng.gamma(5, 4, len(ids)) - 1
        skill = k / n_models
        answered = rng.random(n_questions) < skill
        for q in np.flatnonzero(answered):
            row[4 * q + q % 4] = 0.0  # the gold choice is the most likely
        expected.append(
            np.mean([np.argmax(row[4 * q : 4 * q + 4]) == q % 4 for q in range(n_questions)])
        )
        writer.append(f"model-{k}", row, np.ones(len(ids), np.int32), np.zeros(len(ids), bool), {})
    writer.compact()
    return path, np.array(expected)


def _store_keeps_questions(path) -> bool:
    store = open_store(path)
    text_set = store.text_set() if callable(store.text_set) else store.text_set
    return bool(text_set.metadata) and "question_id" in (text_set.metadata[0] or {})


def test_accuracy_csv_is_read_by_predict(tmp_path, capsys):
    store, expected = _question_store(tmp_path / "questions.h5")
    if not _store_keeps_questions(store):
        pytest.fail("the store does not keep the texts' question_id and gold (issue 23's store change)")
    out = tmp_path / "accuracy.csv"
    assert main(["accuracy", str(store), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "10 models, 30 questions" in printed and "model-9" in printed
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model"] for row in rows] == [f"model-{k}" for k in range(10)]
    assert list(rows[0]) == [
        "model", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "acc_norm_chars",
        "acc_norm_chars_stderr", "questions",
    ]
    np.testing.assert_array_equal([float(row["acc"]) for row in rows], expected * 100)
    p = expected
    np.testing.assert_allclose([float(row["acc_stderr"]) for row in rows], 100 * np.sqrt(p * (1 - p) / 30))
    assert {row["questions"] for row in rows} == {"30"}
    result = store_accuracy(store)
    np.testing.assert_array_equal(result.acc, expected)
    assert jaxmap.store_accuracy is store_accuracy
    code = main(["predict", str(store), "--scores", str(out), "--target", "acc", "--seeds", "1"])
    printed = capsys.readouterr().out
    assert code == 0 and "10 of 10 models have a acc score" in printed and "KFold" in printed


def _run(argv, capsys):
    try:
        code = main([str(part) for part in argv])
    except SystemExit as leaving:
        code = leaving.code
    return code, capsys.readouterr().err.strip().splitlines()


def test_wrong_inputs_are_one_line_with_exit_2(tmp_path, capsys):
    plain, _ = _question_store(tmp_path / "plain.h5", n_models=2, n_questions=3, with_metadata=False)
    cases = [
        (["accuracy", plain], "no text has a question_id"),
        (["accuracy", tmp_path / "missing.h5"], "missing.h5: no such file"),
        (["accuracy", tmp_path], "is a directory"),
        (["accuracy", plain, "--out", tmp_path / "no-such-directory" / "a.csv"], "its directory does not exist"),
        (["accuracy", plain, "--out", plain], "is also an input of this command"),
    ]
    for argv, expected in cases:
        code, error = _run(argv, capsys)
        assert code == 2 and len(error) == 1, (argv, error)
        assert error[0].startswith("jaxmap accuracy: error: ") and expected in error[0], error
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("plain.h5.")) == ["plain.h5"]
