"""The map subcommands: map (a 2-D picture of the models, and an offline HTML page) and
uncertainty (a bootstrap over the texts: ellipses on the map, and how stable neighbours are)."""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

from ..analysis import AnalysisError, double_center, kl_matrix, map_metadata
from ..outputs import atomic_outputs
from . import int_at_least, positive_float, quantile
from .analysis import (
    _about,
    _add_input,
    _checks_outputs,
    _describe,
    _exact,
    _inputs,
    _load_clipped,
    _write_matrix_csv,
)

_AXIS_LABELS = {"tsne": "t-SNE", "pca": "PC", "mds": "MDS"}


@_checks_outputs
def _run_map(args: argparse.Namespace) -> int:
    from ..analysis.plots import image_format, map_html, plot_map
    from ..analysis.projection import effective_perplexity, project

    image_format(args.out)
    matrix, clipped, tau = _load_clipped(args)
    print(_describe(matrix, tau, args))
    metadata = map_metadata(matrix, args.meta, args.color_by)
    if args.color_by and not any(args.color_by in row for row in metadata):
        raise AnalysisError(
            f"--color-by {args.color_by}: no such column in the store's model metadata"
            + ("" if args.meta else "; give --meta models.csv with that column")
        )
    colors = (
        [None if row.get(args.color_by) in (None, "") else str(row[args.color_by]) for row in metadata]
        if args.color_by
        else None
    )
    models, texts = clipped.shape
    perplexity = effective_perplexity(models, args.perplexity)
    with _about(matrix.source):
        coordinates = project(
            double_center(clipped), args.method, seed=args.seed, perplexity=perplexity
        )
        divergences = kl_matrix(clipped) if args.html else None
    if args.method == "tsne" and perplexity < args.perplexity:
        # After the projection, which refuses too few models: a note before a refusal misleads.
        print(
            f"note: t-SNE perplexity lowered to {perplexity:.3g} for {models} models",
            file=sys.stderr,
        )
    title = f"{_AXIS_LABELS[args.method]} map of {models} models on {texts} texts"
    written = [args.out, args.html, args.coords]
    with atomic_outputs(written, _inputs(args)) as (png, html, coords):
        plot_map(
            coordinates,
            matrix.models,
            png,
            color_values=colors,
            color_label=args.color_by or "",
            axis_label=_AXIS_LABELS[args.method],
            title=title,
            labels=args.label,
            label_count=args.label_count,
        )
        if html:
            map_html(
                coordinates,
                matrix.models,
                html,
                metadata=metadata,
                color_by=args.color_by,
                kl=divergences,
                axis_label=_AXIS_LABELS[args.method],
                title=title,
            )
        if coords:
            _write_matrix_csv(coords, matrix.models, ["x", "y"], coordinates)
    for path in written:
        if path:
            print(f"wrote {path}")
    return 0


@_checks_outputs
def _run_uncertainty(args: argparse.Namespace) -> int:
    from ..analysis.plots import image_format
    from ..analysis.uncertainty import bootstrap_map, plot_uncertainty

    image_format(args.out)
    matrix, clipped, tau = _load_clipped(args)
    print(_describe(matrix, tau, args))
    with _about(matrix.source):
        result = bootstrap_map(clipped, args.bootstrap, seed=args.seed, level=args.level)
    names = matrix.models
    print(
        f"{args.bootstrap} bootstrap replicates over {clipped.shape[1]} texts; "
        f"{args.level:.0%} ellipses on the first two principal axes of Q/sqrt(2N)"
    )
    print(f"{'model':<40} {'nearest':<40} {'kept':>6} {'ellipse area':>13}")
    for index in np.argsort(result.neighbor_stability, kind="stable"):
        print(
            f"{names[index]:<40} {names[result.neighbor[index]]:<40} "
            f"{result.neighbor_stability[index]:>6.0%} {result.area[index]:>13.4g}"
        )
    with atomic_outputs([args.out, args.csv], _inputs(args)) as (image, table):
        plot_uncertainty(result, names, image, labels=args.labels)
        if table:
            with open(table, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(
                    ["model", "x", "y", "semi_major", "semi_minor", "angle_rad", "area",
                     "nearest", "nearest_kept"]
                )
                for index, name in enumerate(names):
                    writer.writerow(
                        [name, *(_exact(v) for v in (*result.center[index], *result.ellipse_axes[index],
                                                     result.ellipse_angle[index], result.area[index])),
                         names[result.neighbor[index]], _exact(result.neighbor_stability[index])]
                    )
    for path in (args.out, args.csv):
        if path:
            print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    """Add the map and uncertainty subcommands."""
    map_ = subparsers.add_parser("map", help="2-D map of the models (PNG, optional offline HTML)")
    _add_input(map_)
    map_.add_argument("--out", required=True, help="PNG file")
    map_.add_argument(
        "--html",
        help="also write an interactive self-contained HTML map (hover, colour menu, search, "
        "trajectories, nearest neighbours)",
    )
    map_.add_argument(
        "--method",
        choices=("tsne", "pca", "mds"),
        default="tsne",
        help="projection (default t-SNE, as in the papers)",
    )
    map_.add_argument(
        "--meta", help="CSV with one row per model (column 'model', else the first, holds the name)"
    )
    map_.add_argument(
        "--color-by",
        metavar="COLUMN",
        help="colour the points by this column of --meta or of the store's model metadata",
    )
    map_.add_argument(
        "--label",
        action="append",
        metavar="NAME",
        help="write this model's name on the PNG (repeatable; default: the --label-count most "
        "distinct models)",
    )
    map_.add_argument(
        "--label-count",
        type=int_at_least(0),
        default=30,
        metavar="K",
        help="without --label, name this many models spread over the map (default 30)",
    )
    map_.add_argument(
        "--perplexity", type=positive_float, default=30.0, help="t-SNE perplexity (default 30)"
    )
    map_.add_argument("--seed", type=int_at_least(0), default=0, help="random seed of t-SNE / MDS (default 0)")
    map_.add_argument("--coords", help="also write the 2-D coordinates as CSV")
    map_.set_defaults(func=_run_map)

    uncertainty = subparsers.add_parser(
        "uncertainty", help="bootstrap over texts: ellipses on the map and how stable neighbours are"
    )
    _add_input(uncertainty)
    uncertainty.add_argument("--out", required=True, metavar="PNG", help="image of the map with ellipses")
    uncertainty.add_argument("--csv", help="CSV of every model's position, ellipse and neighbour stability")
    uncertainty.add_argument(
        "--bootstrap", type=int_at_least(2), default=200, help="bootstrap replicates (default 200)"
    )
    uncertainty.add_argument(
        "--level", type=quantile, default=0.95, help="probability mass inside each ellipse (default 0.95)"
    )
    uncertainty.add_argument("--labels", type=int_at_least(0), default=30, help="models labelled, largest ellipses first (default 30)")
    uncertainty.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    uncertainty.set_defaults(func=_run_uncertainty)
