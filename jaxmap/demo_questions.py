"""A multiple-choice question set built from the demo corpora: which sentence comes next?

Each question is a context of a few consecutive sentences of one document, the sentence that
follows them in that document (gold) and three distractor sentences drawn from *other*
documents of the same domain, so that topic alone rarely gives the answer away. The sources are
the demo text set's (:mod:`jaxmap.demo_texts`: the same packages, pinned versions, licences and
installers); nothing is downloaded.

Rules:

- Documents are cut into passages at blank lines (paragraphs; a conversation in the dialogue
  corpus) and passages into sentences: prose after ``.``, ``!`` or ``?`` followed by white space
  and a capital letter, digit, quote or bracket; dialogue, one turn per line. A sentence counts
  when it has between 12 and 400 UTF-8 bytes.
- A question's position is a sentence of a passage with at least one counted sentence before it
  in the passage; its context is up to ``context_sentences`` sentences before it, joined by one
  space. Positions are shuffled with a ``random.Random`` seeded by ``(seed, domain)``; each
  document gives one question before any gives a second.
- Distractors: sentences of other documents of the domain, distinct from each other, the gold
  and the context sentences; of 64 seeded draws, the three closest in bytes to the gold
  (so that length alone does not tell the answer).
- The four choices are shuffled; every choice is one JSONL line with ``id``, ``question_id``,
  ``context``, ``continuation`` (a space and the sentence: lm-evaluation-harness's
  ``target_delimiter`` convention), ``gold``, ``domain``, ``document`` (of the question),
  ``choice_document`` (where the sentence comes from), ``source`` and ``licence``.

The same seed, count, domains, package versions and Python version give the same file, byte for
byte. A manifest beside the file (``name.manifest.json``) records the sources, their licences and
attribution, the rules' parameters and the file's SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import random
import re
from pathlib import Path
from typing import Sequence

from . import demo_texts
from .demo_texts import DEMO_SOURCES, install_commands, manifest_path, source_record
from .errors import DemoSourceError, TextSetError
from .outputs import atomic_outputs, make_directory

__all__ = ["DEFAULT_QUESTION_DOMAINS", "build_next_sentence_questions"]

BUILDER_VERSION = 1
CHOICES = 4
MIN_SENTENCE_BYTES = 12
MAX_SENTENCE_BYTES = 400
DISTRACTOR_DRAWS = 64
# Domains with sentences: the pip-installed prose and dialogue corpora (code has none).
DEFAULT_QUESTION_DOMAINS: tuple[str, ...] = ("encyclopedia", "science", "scripture", "dialogue")
_NO_SENTENCES = {"code"}
_LINE_UNITS = {"dialogue"}  # one sentence per line: a turn of the conversation
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[“‘])")


def _sentences(passage: str, by_line: bool) -> list[str]:
    if by_line:
        pieces = passage.splitlines()
    else:
        pieces = _SENTENCE_END.split(" ".join(passage.split()))
    return [" ".join(piece.split()) for piece in pieces if piece.strip()]


def _counted(sentence: str) -> bool:
    return MIN_SENTENCE_BYTES <= len(sentence.encode("utf-8")) <= MAX_SENTENCE_BYTES


@functools.lru_cache(maxsize=None)
def _documents(domain: str, root: Path) -> tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]:
    """Every document of a domain as ``(document id, passages)``, each passage its sentences."""
    import yaml

    source = DEMO_SOURCES[domain]
    documents = []
    try:
        for document_id, text in source.documents(root):
            passages = tuple(
                tuple(_sentences(passage, domain in _LINE_UNITS))
                for passage in re.split(r"\n\s*\n", text)
            )
            documents.append((document_id, tuple(p for p in passages if p)))
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as error:
        raise DemoSourceError(
            f"demo source {domain} ({source.package} {source.version} under {root}) is damaged or "
            f"incomplete ({type(error).__name__}: {error}); reinstall it: {source.install}"
        ) from None
    return tuple(documents)


def _check_domains(domains: Sequence[str] | None) -> tuple[str, ...]:
    chosen = tuple(DEFAULT_QUESTION_DOMAINS if domains is None else domains)
    unknown = [d for d in chosen if d not in DEMO_SOURCES]
    if unknown:
        raise TextSetError(f"unknown demo domain(s) {unknown}; known: {', '.join(DEMO_SOURCES)}")
    without = [d for d in chosen if d in _NO_SENTENCES]
    if without:
        raise TextSetError(f"demo domain(s) {without} have no sentences to choose between; leave them out")
    if len(set(chosen)) != len(chosen):
        raise TextSetError(f"demo domains listed twice: {list(chosen)}")
    if not chosen:
        raise TextSetError("no demo domains chosen")
    return chosen


def _roots(domains: tuple[str, ...]) -> dict[str, Path]:
    roots, problems = {}, []
    for domain in domains:
        root, problem = demo_texts._locate(DEMO_SOURCES[domain])
        if root is None:
            problems.append(f"{domain} ({DEMO_SOURCES[domain].package}): {problem}")
        else:
            roots[domain] = root
    if problems:
        raise DemoSourceError(
            "demo question sources unavailable: " + "; ".join(problems)
            + ". Install them with: " + " && ".join(install_commands(domains))
        )
    return roots


def _positions(documents) -> list[tuple[int, int, int]]:
    """Every (document, passage, sentence) that can be a question's gold: a counted sentence
    with a sentence before it in its passage."""
    found = []
    for d, (_, passages) in enumerate(documents):
        for p, sentences in enumerate(passages):
            for s in range(1, len(sentences)):
                if _counted(sentences[s]):
                    found.append((d, p, s))
    return found


def _domain_questions(domain: str, documents, count: int, seed: int, context_sentences: int) -> list[dict]:
    rng = random.Random(f"jaxmap-questions:{seed}:{domain}")
    positions = _positions(documents)
    rng.shuffle(positions)
    # One question per document first, then second ones, and so on.
    rank: dict[int, int] = {}
    ordered = []
    for position in positions:
        ordered.append((rank.get(position[0], 0), len(ordered), position))
        rank[position[0]] = rank.get(position[0], 0) + 1
    ordered.sort()
    pool = [
        (d, sentence)
        for d, (_, passages) in enumerate(documents)
        for sentences in passages
        for sentence in sentences
        if _counted(sentence)
    ]
    if len({d for d, _ in pool}) < 2:
        raise TextSetError(f"demo domain {domain!r} has too few documents for distractors")
    source = DEMO_SOURCES[domain]
    questions = []
    for _, _, (d, p, s) in ordered:
        if len(questions) == count:
            break
        document_id, passages = documents[d]
        sentences = passages[p]
        gold = sentences[s]
        context = sentences[max(0, s - context_sentences) : s]
        taken = {gold, *context}
        draws = []
        for _ in range(DISTRACTOR_DRAWS):
            other, sentence = pool[rng.randrange(len(pool))]
            if other != d and sentence not in taken:
                taken.add(sentence)
                draws.append((other, sentence))
        gold_bytes = len(gold.encode("utf-8"))
        draws.sort(key=lambda draw: abs(len(draw[1].encode("utf-8")) - gold_bytes))
        if len(draws) < CHOICES - 1:
            continue
        choices = [(d, gold, True), *((o, sentence, False) for o, sentence in draws[: CHOICES - 1])]
        rng.shuffle(choices)
        question_id = f"{domain}/{document_id}#{p}.{s}"
        questions.append(
            [
                {
                    "id": f"{question_id}/{'abcd'[c]}",
                    "question_id": question_id,
                    "context": " ".join(context),
                    "continuation": " " + sentence,
                    "gold": is_gold,
                    "domain": domain,
                    "document": document_id,
                    "choice_document": documents[o][0],
                    "source": f"{source.package}=={source.version}",
                    "licence": source.licence,
                }
                for c, (o, sentence, is_gold) in enumerate(choices)
            ]
        )
    if len(questions) < count:
        raise TextSetError(
            f"demo domain {domain!r} gives {len(questions)} next-sentence questions, fewer than the "
            f"{count} asked; ask for fewer or add domains"
        )
    return questions


def build_next_sentence_questions(
    out: str | Path | None = None,
    n_questions: int = 200,
    seed: int = 0,
    domains: Sequence[str] | None = None,
    context_sentences: int = 3,
) -> list[dict]:
    """Build the next-sentence question set: ``n_questions`` questions of 4 choices each,
    stratified across ``domains`` (module docstring: the rules).

    Args:
        out: if given, the set is written there as JSONL, one line per choice, and the manifest
            beside it (:func:`jaxmap.demo_texts.manifest_path`), both atomically.
        n_questions: questions in all; each domain gets an equal share, the remainder going one
            each to domains picked by the seed (as the demo text set).
        seed: draws positions, distractors and the order of the choices.
        domains: demo domains with sentences (default ``DEFAULT_QUESTION_DOMAINS``; ``speeches``
            and ``fiction`` once installed with npm).
        context_sentences: at most this many sentences before the one to choose.

    Returns:
        The lines, as dicts, in file order (questions alternate between domains).

    Raises:
        DemoSourceError: a source is missing, not at its pinned version, or damaged.
        TextSetError: an unknown domain or one without sentences (``code``), bad counts, or more
            questions than a domain gives.
        OutputError: ``out`` cannot be written.
    """
    if n_questions < 1:
        raise TextSetError(f"n_questions must be positive, got {n_questions}")
    if context_sentences < 1:
        raise TextSetError(f"context_sentences must be positive, got {context_sentences}")
    chosen = _check_domains(domains)
    roots = _roots(chosen)
    counts = demo_texts._per_domain_counts(n_questions, chosen, seed)
    by_domain = {
        domain: _domain_questions(domain, _documents(domain, roots[domain]), counts[domain], seed, context_sentences)
        for domain in chosen
    }
    records: list[dict] = []
    for rank in range(max(counts.values())):
        for domain in chosen:
            if rank < len(by_domain[domain]):
                records.extend(by_domain[domain][rank])
    if out is not None:
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        manifest = _manifest(chosen, counts, roots, seed, context_sentences, len(records), lines)
        make_directory(Path(out).parent)
        with atomic_outputs([out, manifest_path(out)]) as (questions_file, manifest_file):
            Path(questions_file).write_text(lines, "utf-8")
            manifest_file.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return records


def _manifest(domains, counts, roots, seed, context_sentences, n_lines, lines: str) -> dict:
    sources = []
    for domain in domains:
        sources.append(
            {
                "domain": domain,
                "questions": counts[domain],
                "documents_available": len(_documents(domain, roots[domain])),
                **source_record(domain),
            }
        )
    return {
        "name": "jaxmap next-sentence questions",
        "builder_version": BUILDER_VERSION,
        "questions": sum(counts.values()),
        "lines": n_lines,
        "choices": CHOICES,
        "seed": seed,
        "context_sentences": context_sentences,
        "sentence_bytes": [MIN_SENTENCE_BYTES, MAX_SENTENCE_BYTES],
        "distractor_draws": DISTRACTOR_DRAWS,
        "rule": "context: up to context_sentences consecutive sentences of a passage; gold: the next "
        "sentence; distractors: the 3 sentences closest in bytes to the gold among seeded draws "
        "from other documents of the same domain; choices shuffled",
        "sha256": hashlib.sha256(lines.encode("utf-8")).hexdigest(),
        "python": platform.python_version(),
        "sources": sources,
    }
