"""The subcommands that read the map against other things: predict (benchmark scores from the
map), outliers (texts one model finds far more likely than its neighbours predict) and ica
(independent axes of the map, with their extreme texts and models)."""

from __future__ import annotations

import argparse
import csv

import numpy as np

from ..analysis import AnalysisError, double_center, read_model_table, text_outliers
from ..outputs import atomic_output, atomic_outputs
from . import int_at_least
from .analysis import (
    _about,
    _add_input,
    _checks_outputs,
    _describe,
    _exact,
    _inputs,
    _load_clipped,
    _snippet,
)


def _run_predict(args: argparse.Namespace) -> int:
    from ..analysis.prediction import predict_scores

    matrix, clipped, tau = _load_clipped(args)
    print(_describe(matrix, tau, args))
    needed = [args.target] + ([args.group_by] if args.group_by else [])
    _, by_name = read_model_table(args.scores, needed)
    selected, target, groups = [], [], []
    for index, model in enumerate(matrix.models):
        row = by_name.get(model)
        if row is None or not (row[args.target] or "").strip():
            continue
        try:
            value = float(row[args.target])
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise AnalysisError(
                f"{args.scores}: {args.target} of {model} is {row[args.target]!r}, not a finite number"
            )
        selected.append(index)
        target.append(value)
        groups.append(row[args.group_by] if args.group_by else None)
    if not selected:
        raise AnalysisError(f"{args.scores}: no model of {matrix.source} has a {args.target} score")
    print(f"{len(selected)} of {len(matrix.models)} models have a {args.target} score")
    features = double_center(clipped) if args.features == "q" else clipped
    with _about(f"{args.scores} ({len(selected)} models with a score in {args.target!r})"):
        results = predict_scores(
            features[selected],
            np.asarray(target),
            groups=groups if args.group_by else None,
            seeds=args.seeds,
        )
    for name, result in results.items():
        by = f" by {args.group_by}" if name == "GroupKFold" else ""
        print(f"{name}{by} (5 folds, {args.seeds} seeds): {result.summary()}")
    return 0


@_checks_outputs
def _run_outliers(args: argparse.Namespace) -> int:
    matrix, clipped, tau = _load_clipped(args)
    print(_describe(matrix, tau, args))
    model = matrix.model_index(args.model)
    with _about(matrix.source):
        found = text_outliers(clipped, model, neighbors=args.neighbors)
    ids = matrix.text_ids or [str(i) for i in range(clipped.shape[1])]
    print(
        f"{args.model}: predicted by the mean of its {len(found.neighbors)} nearest models: "
        + ", ".join(matrix.models[j] for j in found.neighbors)
    )
    print(f"{'rank':>4}  {'text':<14} {'z':>7} {'excess (nats)':>13}  snippet")
    for rank, column in enumerate(found.top(args.top), start=1):
        snippet = _snippet(matrix.texts[column]) if matrix.texts else ""
        print(
            f"{rank:>4}  {ids[column]:<14} {found.z[column]:7.2f} "
            f"{found.residual[column]:13.2f}  {snippet}"
        )
    if args.out:
        order = found.top(len(ids))
        with atomic_output(args.out, _inputs(args)) as temporary, open(
            temporary, "w", newline="", encoding="utf-8"
        ) as handle:
            writer = csv.writer(handle)
            writer.writerow(["text_id", "column", "z", "excess_nats"])
            for column in order:
                writer.writerow(
                    [ids[column], column, _exact(found.z[column]), _exact(found.residual[column])]
                )
        print(f"wrote {args.out}")
    return 0


@_checks_outputs
def _run_ica(args: argparse.Namespace) -> int:
    from ..analysis.ica import ica

    if args.plot:
        from ..analysis.plots import image_format, plot_component_tree

        image_format(args.plot)
    matrix, clipped, tau = _load_clipped(args)
    print(_describe(matrix, tau, args))
    with _about(matrix.source):
        result = ica(clipped, args.components, seed=args.seed)
    status = "converged" if result.converged else "did NOT converge (raise --components or check the data)"
    print(
        f"{args.components} independent axes of the map, keeping {result.explained:.1%} of Q's "
        f"variance; FastICA {status} after {result.iterations} iterations"
    )
    ids = matrix.text_ids or [str(i) for i in range(clipped.shape[1])]
    texts = matrix.texts or [""] * len(ids)
    rows = []
    for axis in range(args.components):
        sources, loadings = result.sources[:, axis], result.loadings[:, axis]
        top_texts = np.argsort(-sources, kind="stable")[: args.top]
        by_loading = np.argsort(-loadings, kind="stable")
        high = [matrix.models[i] for i in by_loading[: args.top]]
        low = [matrix.models[i] for i in by_loading[::-1][: args.top]]
        print(f"\nIC{axis + 1}  non-Gaussianity {result.non_gaussianity[axis]:.4f}")
        print("  models loading most:  " + ", ".join(high))
        print("  models loading least: " + ", ".join(low))
        for column in top_texts:
            print(f"  text {ids[column]:<14} {sources[column]:+7.2f}  {_snippet(texts[column])}")
        rows.append(
            [f"IC{axis + 1}", _exact(result.non_gaussianity[axis]), " ".join(ids[c] for c in top_texts),
             " ".join(high), " ".join(low)]
        )
    print("\nmaximum spanning tree (correlation of squared sources):")
    for i, j, weight in result.tree:
        print(f"  IC{i + 1} - IC{j + 1}  {weight:+.3f}")
    with atomic_outputs([args.out, args.loadings, args.plot], _inputs(args)) as (table, loadings_file, plot_file):
        if table:
            with open(table, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["axis", "non_gaussianity", "top_texts", "models_loading_most", "models_loading_least"])
                writer.writerows(rows)
        if loadings_file:
            with open(loadings_file, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["model", *(f"IC{i + 1}" for i in range(args.components))])
                for name, values in zip(matrix.models, result.loadings):
                    writer.writerow([name, *(_exact(v) for v in values)])
        if plot_file:
            plot_component_tree(result, plot_file, title=f"{args.components} independent axes of {len(matrix.models)} models")
    for path in (args.out, args.loadings, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    """Add the predict, outliers and ica subcommands."""
    predict = subparsers.add_parser(
        "predict", help="predict benchmark scores from the map (RidgeCV, paper protocol)"
    )
    _add_input(predict)
    predict.add_argument(
        "--scores",
        required=True,
        help="CSV with a 'model' column (else the first) and score columns",
    )
    predict.add_argument(
        "--target", required=True, metavar="COL", help="the score column to predict (0–100)"
    )
    predict.add_argument(
        "--group-by", metavar="COL", help="also run GroupKFold with groups from this column"
    )
    predict.add_argument(
        "--features",
        choices=("q", "loglik"),
        default="q",
        help="Q (default) or the clipped log-likelihoods",
    )
    predict.add_argument(
        "--seeds", type=int_at_least(1), default=5, help="outer cross-validation seeds (default 5)"
    )
    predict.set_defaults(func=_run_predict)

    outliers = subparsers.add_parser(
        "outliers", help="texts one model finds far more likely than its neighbours predict"
    )
    _add_input(outliers)
    outliers.add_argument("--model", required=True, help="model name as in the store")
    outliers.add_argument(
        "--neighbors", type=int_at_least(1), default=10, help="models whose mean is the prediction (default 10)"
    )
    outliers.add_argument("--top", type=int_at_least(1), default=20, help="texts to list (default 20)")
    outliers.add_argument("--out", help="CSV of every text's z-score and excess log-likelihood")
    outliers.set_defaults(func=_run_outliers)

    ica_ = subparsers.add_parser(
        "ica", help="independent axes of the map (FastICA), their extreme texts and models"
    )
    _add_input(ica_)
    ica_.add_argument("--components", type=int_at_least(1), required=True, metavar="K", help="number of axes")
    ica_.add_argument("--top", type=int_at_least(1), default=5, help="texts and models listed per axis (default 5)")
    ica_.add_argument("--seed", type=int_at_least(0), default=0, help="seed of FastICA's starting rotation (default 0)")
    ica_.add_argument("--out", help="CSV table of the axes")
    ica_.add_argument("--loadings", help="CSV of every model's loading on every axis")
    ica_.add_argument("--plot", metavar="PNG", help="image of the axes' maximum spanning tree")
    ica_.set_defaults(func=_run_ica)
