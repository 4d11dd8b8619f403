"""Multiple-choice benchmarks: accuracy (each model's lm-eval ``acc`` and ``acc_norm`` from a
store of a question set) and questions (build the next-sentence question set from the demo
corpora)."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ..outputs import atomic_output, check_outputs
from . import int_at_least

# The CSV's columns after ``model``: accuracies and standard errors in percent (0–100, the
# scale `jaxmap predict` works in), then the number of questions.
CSV_METRICS = ("acc", "acc_norm", "acc_norm_chars")


def _percent(value: float) -> str:
    return repr(float(value) * 100.0)


def write_accuracy_csv(result, path) -> None:
    """Write ``result`` (:class:`~jaxmap.analysis.accuracy.AccuracyResult`) as the CSV
    `jaxmap predict --scores` reads: ``model``, then each metric and its ``_stderr`` in percent,
    then ``questions``."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        header = ["model"]
        for metric in CSV_METRICS:
            header += [metric, f"{metric}_stderr"]
        writer.writerow([*header, "questions"])
        for k, model in enumerate(result.models):
            row = [model]
            for metric in CSV_METRICS:
                row += [_percent(getattr(result, metric)[k]), _percent(result.stderr(metric)[k])]
            writer.writerow([*row, result.questions])


def _run_accuracy(args: argparse.Namespace) -> int:
    from ..analysis.accuracy import store_accuracy
    from ..errors import StoreError
    from ..store import open_store

    check_outputs([args.out], [args.store])
    path = Path(args.store)
    if not path.exists():
        raise StoreError(f"{path}: no such file")
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a store file")
    store = open_store(path)
    if not store.models:
        raise StoreError(f"{path}: the store has no models yet")
    result = store_accuracy(store, missing="skip" if args.skip_missing else "refuse")
    skipped = f"; {len(result.skipped)} skipped for missing log-likelihoods" if result.skipped else ""
    print(f"{path}: {len(result.models)} models, {result.questions} questions{skipped}")
    width = max(len("model"), *(len(m) for m in result.models))
    print(f"{'model':<{width}}  {'acc':>13}  {'acc_norm':>13}  {'acc_norm_chars':>14}")
    for k, model in enumerate(result.models):
        cells = [
            f"{100 * getattr(result, m)[k]:5.1f} ± {100 * result.stderr(m)[k]:4.1f}" for m in CSV_METRICS
        ]
        print(f"{model:<{width}}  {cells[0]:>13}  {cells[1]:>13}  {cells[2]:>14}")
    print("(percent ± binomial standard error; acc_norm per byte, acc_norm_chars per character as lm-eval)")
    if args.out:
        with atomic_output(args.out, [args.store]) as temporary:
            write_accuracy_csv(result, temporary)
        print(f"wrote {args.out}")
    return 0


def _domains(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _run_questions(args: argparse.Namespace) -> int:
    from ..demo_questions import build_next_sentence_questions
    from ..demo_texts import manifest_path

    check_outputs([args.out, manifest_path(args.out)])
    records = build_next_sentence_questions(
        args.out,
        n_questions=args.count,
        seed=args.seed,
        domains=args.domains,
        context_sentences=args.context_sentences,
    )
    questions = len({record["question_id"] for record in records})
    domains = sorted({record["domain"] for record in records})
    print(f"wrote {args.out}: {questions} questions, {len(records)} choices ({', '.join(domains)})")
    print(f"wrote {manifest_path(args.out)} (sources, licences, attribution)")
    return 0


def register(subparsers) -> None:
    """Add the accuracy and questions subcommands."""
    accuracy = subparsers.add_parser(
        "accuracy", help="multiple-choice accuracy of every model (lm-eval's acc and acc_norm)"
    )
    accuracy.add_argument("store", metavar="STORE", help="jaxmap store of a question set")
    accuracy.add_argument(
        "--out", metavar="CSV", help="write the table as CSV (percent), as `jaxmap predict --scores` reads it"
    )
    accuracy.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave out questions with a missing log-likelihood (default: refuse)",
    )
    accuracy.set_defaults(func=_run_accuracy)

    questions = subparsers.add_parser(
        "questions", help="build the next-sentence multiple-choice set from the demo corpora"
    )
    questions.add_argument("--out", required=True, metavar="FILE", help="JSONL question set to write")
    questions.add_argument(
        "--count", type=int_at_least(1), default=200, help="questions, 4 choices each (default 200)"
    )
    questions.add_argument("--seed", type=int_at_least(0), default=0, help="draws the questions (default 0)")
    questions.add_argument(
        "--domains",
        type=_domains,
        default=None,
        help="comma-separated demo domains (default encyclopedia,science,scripture,dialogue)",
    )
    questions.add_argument(
        "--context-sentences",
        type=int_at_least(1),
        default=3,
        help="sentences before the one to choose, at most (default 3)",
    )
    questions.set_defaults(func=_run_questions)
