"""The analysis subcommands: kl, map, predict, resample, add, outliers, tree.

Each reads a jaxmap store (or a ``.npy`` / plain HDF5 matrix), clips it at the global
``--clip-quantile`` (0.02, as in the papers; 0 disables) and reports for people: results on
stdout, a one-line error naming the file or model on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..analysis import (
    AnalysisError,
    LoglikMatrix,
    MapInfo,
    clip,
    double_center,
    kl_matrix,
    load_loglik,
    nearest_neighbors,
    read_subset,
    resample,
    resampling_curve,
    text_outliers,
    write_subset,
)
from ..analysis.resampling import METHODS
from ..batching import MIN_BUCKET
from ..outputs import atomic_output, atomic_outputs, check_outputs
from . import int_at_least, positive_float, quantile

# Arguments that name files a command reads, and files it writes.
_INPUT_ARGUMENTS = ("store", "subset", "meta", "scores", "models")
_OUTPUT_ARGUMENTS = ("out", "html", "curve", "kl_out", "coords", "plot")


def _inputs(args: argparse.Namespace) -> list[str]:
    """The files the command reads (model references only where they are files)."""
    found = []
    for name in _INPUT_ARGUMENTS:
        value = getattr(args, name, None)
        if name == "models":
            found += [model for model in value or () if Path(model).is_file()]
        elif value:
            found.append(value)
    return found


def _outputs(args: argparse.Namespace) -> list[str | None]:
    return [getattr(args, name, None) for name in _OUTPUT_ARGUMENTS]


def _checks_outputs(
    handler: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    """Refuse, before any work, outputs that are inputs, named twice, or cannot be written."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        check_outputs(_outputs(args), _inputs(args))
        return handler(args)

    return run


def _add_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "store",
        metavar="STORE",
        help="jaxmap store (.h5), .npy matrix, or HDF5 file with a K×N matrix",
    )
    parser.add_argument(
        "--clip-quantile",
        type=quantile,
        default=0.02,
        metavar="Q",
        help="clip log-likelihoods below this global quantile (default 0.02 as in the papers; "
        "0 disables)",
    )


@contextlib.contextmanager
def _about(source: str | Path) -> Iterator[None]:
    """Name ``source`` in the analysis errors raised inside: the file the numbers came from."""
    try:
        yield
    except AnalysisError as error:
        raise type(error)(f"{source}: {error}") from None


def _load_clipped(args: argparse.Namespace) -> tuple[LoglikMatrix, np.ndarray, float]:
    matrix = load_loglik(args.store)
    with _about(matrix.source):
        clipped, tau = clip(matrix.loglik, args.clip_quantile)
    return matrix, clipped, tau


def _describe(matrix: LoglikMatrix, tau: float, args: argparse.Namespace) -> str:
    models, texts = matrix.loglik.shape
    return (
        f"{matrix.source}: {models} models × {texts} texts, "
        f"clipped at τ = {tau:.6g} nats (quantile {args.clip_quantile:g})"
    )


def _text_bytes(matrix: LoglikMatrix) -> np.ndarray:
    if matrix.text_bytes is None:
        raise AnalysisError(
            f"{matrix.source}: bits per byte needs the texts' byte lengths, "
            "which only a jaxmap store has"
        )
    return matrix.text_bytes


def _write_matrix_csv(
    path: Path,
    row_names: Sequence[str],
    column_names: Sequence[str],
    values: np.ndarray,
) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", *column_names])
        for name, row in zip(row_names, values):
            writer.writerow([name, *(f"{v:.10g}" for v in row)])


def _print_neighbors(
    names: Sequence[str], candidate_names: Sequence[str], indices, values, unit: str
) -> None:
    for name, row_indices, row_values in zip(names, indices, values):
        listed = ", ".join(
            f"{candidate_names[j]} ({v:.4g})" for j, v in zip(row_indices, row_values)
        )
        print(f"{name}: {listed}")
    print(f"(nearest first; estimated KL in {unit})")


def _read_table(path: str | Path, needed: Sequence[str]) -> tuple[str, dict[str, dict[str, str]]]:
    """The rows of a CSV file by model name, and the name column ("model" if present, else the
    first). A UTF-8 byte-order mark (as spreadsheets write) is accepted; a model named on two
    rows is refused, naming both lines."""
    path = Path(path)
    if path.is_dir():
        raise AnalysisError(f"{path}: is a directory, not a CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = [(reader.line_num, row) for row in reader]
            columns = reader.fieldnames or []
    except FileNotFoundError:
        raise AnalysisError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise AnalysisError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise AnalysisError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None
    except OSError as error:
        raise AnalysisError(f"{path}: cannot read ({error.strerror or error})") from None
    if not columns or not rows:
        raise AnalysisError(f"{path}: no header or no rows")
    for column in needed:
        if column not in columns:
            raise AnalysisError(f"{path}: no column {column!r} (columns: {', '.join(columns)})")
    key = "model" if "model" in columns else columns[0]
    by_name: dict[str, dict[str, str]] = {}
    line_of: dict[str, int] = {}
    for line, row in rows:
        name = row[key]
        if name in by_name:
            raise AnalysisError(f"{path}:{line}: model {name!r} has a second row (first on line {line_of[name]})")
        by_name[name], line_of[name] = row, line
    return key, by_name


# kl ------------------------------------------------------------------------------------------


@_checks_outputs
def _run_kl(args: argparse.Namespace) -> int:
    matrix, clipped, tau = _load_clipped(args)
    text_bytes = _text_bytes(matrix) if args.bits_per_byte else None
    unit = "bits per byte" if args.bits_per_byte else "nats per text"
    print(_describe(matrix, tau, args))
    divergences = kl_matrix(clipped, text_bytes=text_bytes, progress=len(matrix.models) > 4096)
    with atomic_output(args.out, _inputs(args)) as temporary:
        _write_matrix_csv(temporary, matrix.models, matrix.models, divergences)
    print(f"wrote {args.out} ({unit})")
    indices, values = nearest_neighbors(divergences, args.neighbors)
    _print_neighbors(matrix.models, matrix.models, indices, values, unit)
    return 0


# map -----------------------------------------------------------------------------------------

_AXIS_LABELS = {"tsne": "t-SNE", "pca": "PC", "mds": "MDS"}


# Store metadata that says how a row was computed, not what the model is; kept out of the
# hover text of the map so that what tells models apart stays readable.
_RUN_STATISTICS = (
    "seconds", "tokens", "tokens_per_second", "padding_fraction", "batch_shapes", "compilations",
    "compile_seconds", "load_seconds", "jaxmap_version", "tokenizer",
)


def _map_metadata(args: argparse.Namespace, matrix: LoglikMatrix) -> list[dict]:
    """One metadata row per model: what the store records, then the --meta CSV's columns."""
    rows: list[dict] = [{} for _ in matrix.models]
    if matrix.is_store:
        from ..store import read_model_meta

        rows = [
            {k: v for k, v in meta.items() if k not in _RUN_STATISTICS}
            for meta in read_model_meta(matrix.source)
        ]
    if args.meta:
        in_store = any(args.color_by in row for row in rows) if args.color_by else True
        key, table = _read_table(args.meta, [] if in_store else [args.color_by])
        found = [table.get(model) for model in matrix.models]
        if all(row is None for row in found):
            raise AnalysisError(
                f"{args.meta}: none of its {key!r} values names a model of the map "
                f"(e.g. {next(iter(table))!r} vs {matrix.models[0]!r})"
            )
        missing = sum(row is None for row in found)
        if missing:
            print(f"note: {missing} of {len(matrix.models)} models have no row in {args.meta}", file=sys.stderr)
        for row, extra in zip(rows, found):
            row.update({k: v for k, v in (extra or {}).items() if k != key})
    if args.color_by and not any(args.color_by in row for row in rows):
        raise AnalysisError(
            f"--color-by {args.color_by}: no such column in the store's model metadata"
            + ("" if args.meta else "; give --meta models.csv with that column")
        )
    return rows


@_checks_outputs
def _run_map(args: argparse.Namespace) -> int:
    from ..analysis.plots import image_format, map_html, plot_map
    from ..analysis.projection import effective_perplexity, project

    image_format(args.out)
    matrix, clipped, tau = _load_clipped(args)
    print(_describe(matrix, tau, args))
    metadata = _map_metadata(args, matrix)
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


# predict -------------------------------------------------------------------------------------


def _run_predict(args: argparse.Namespace) -> int:
    from ..analysis.prediction import predict_scores

    matrix, clipped, tau = _load_clipped(args)
    print(_describe(matrix, tau, args))
    needed = [args.target] + ([args.group_by] if args.group_by else [])
    _, by_name = _read_table(args.scores, needed)
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


# resample ------------------------------------------------------------------------------------


def _default_curve_sizes(n_texts: int) -> list[int]:
    return sorted(
        set(np.geomspace(max(5, n_texts // 100), n_texts, 8).round().astype(int).tolist())
    )


@_checks_outputs
def _run_resample(args: argparse.Namespace) -> int:
    if not args.out and not args.curve:
        raise AnalysisError(
            "nothing to do: give --out subset.jsonl (with --n) and/or --curve curve.png"
        )
    if args.out and args.n is None:
        raise AnalysisError("--out needs --n, the number of texts to draw")
    if args.curve:
        from ..analysis.plots import image_format, plot_resampling_curve

        image_format(args.curve)
    matrix, clipped, tau = _load_clipped(args)
    print(_describe(matrix, tau, args))
    if args.out and not matrix.is_store:
        raise AnalysisError(
            f"{matrix.source}: a subset file needs the texts, which only a jaxmap store has"
        )
    Q = double_center(clipped)
    subset = curve = None
    if args.out:
        with _about(matrix.source):
            indices, scales = resample(Q, args.n, args.method, args.seed)
        info = MapInfo(
            tau=tau,
            draws=args.n,
            n_texts=clipped.shape[1],
            n_models=clipped.shape[0],
            method=args.method,
            seed=args.seed,
            clip_quantile=args.clip_quantile,
            text_fingerprint=matrix.text_fingerprint,
            source=str(matrix.source),
        )
        subset = (indices, scales, info)
    if args.curve:
        sizes = args.curve_sizes or _default_curve_sizes(clipped.shape[1])
        with _about(matrix.source):
            curve = resampling_curve(Q, sizes, seeds=range(args.curve_seeds), progress=True)
    # Both outputs are written together at the end: a curve that fails keeps the old subset.
    with atomic_outputs([args.out, args.curve], _inputs(args)) as (subset_file, curve_file):
        if subset:
            write_subset(subset_file, matrix.text_ids, matrix.texts, *subset)
        if curve:
            plot_resampling_curve(
                curve,
                curve_file,
                title=f"Resampling error, {clipped.shape[0]} models, {len(curve.seeds)} seeds",
            )
    if subset:
        print(
            f"wrote {args.out}: {len(subset[0])} distinct texts from {args.n} {args.method} draws "
            f"(seed {args.seed})"
        )
    if curve:
        print("n      " + "  ".join(f"{m:>16}" for m in curve.errors))
        for position, size in enumerate(curve.sizes):
            cells = "  ".join(
                f"{curve.mean(m)[position]:8.4f} ± {curve.sd(m)[position]:5.3f}"
                for m in curve.errors
            )
            print(f"{size:<7d}{cells}")
        print(f"wrote {args.curve}")
    return 0


# add -----------------------------------------------------------------------------------------


def _run_add(args: argparse.Namespace) -> int:
    from ..placement import add_models

    out = Path(args.out) if args.out else Path(args.subset).with_suffix(".h5")
    check_outputs([out, args.kl_out], _inputs(args))  # the default --out too, before any work
    placement = add_models(
        args.store,
        args.subset,
        args.models,
        out=out,
        bits_per_byte=args.bits_per_byte,
        dtype=args.dtype,
        bos_policy=args.bos_policy,
        batch_tokens=args.batch_tokens,
        progress=not args.quiet,
    )
    print(
        f"scored {len(placement.models)} models on {placement.subset_texts} texts "
        f"into {out}; placed on {args.store}"
    )
    if args.kl_out:
        with atomic_output(args.kl_out, [*_inputs(args), out]) as temporary:
            _write_matrix_csv(temporary, placement.models, placement.map_models, placement.kl)
        print(f"wrote {args.kl_out} ({placement.unit})")
    order = np.argsort(placement.kl, axis=1, kind="stable")[:, : args.neighbors]
    _print_neighbors(
        placement.models,
        placement.map_models,
        order,
        np.take_along_axis(placement.kl, order, axis=1),
        placement.unit,
    )
    return 0


# tree ----------------------------------------------------------------------------------------


@_checks_outputs
def _run_tree(args: argparse.Namespace) -> int:
    from ..analysis.tree import build_tree, plot_tree

    if args.plot:
        from ..analysis.plots import image_format

        image_format(args.plot)
    matrix, clipped, tau = _load_clipped(args)
    print(_describe(matrix, tau, args))
    text_bytes = _text_bytes(matrix) if args.bits_per_byte else None
    unit = "bits per byte" if args.bits_per_byte else "nats per text"
    with _about(matrix.source):
        divergences = kl_matrix(clipped, text_bytes=text_bytes)
        tree = build_tree(divergences, matrix.models, args.method)
    newick = tree.to_newick()
    name = {"nj": "neighbour-joining", "average": "average-linkage"}[args.method]
    with atomic_outputs([args.out, args.plot], _inputs(args)) as (newick_file, plot_file):
        if newick_file:
            newick_file.write_text(newick + "\n", encoding="utf-8")
        if plot_file:
            plot_tree(
                tree,
                plot_file,
                title=f"{name.capitalize()} tree of {len(matrix.models)} models (estimated KL)",
                unit=unit,
            )
    if not args.out:
        print(newick)
    for path in (args.out, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


# ica -----------------------------------------------------------------------------------------


@_checks_outputs
def _run_ica(args: argparse.Namespace) -> int:
    from ..analysis.ica import ica, plot_component_tree

    if args.plot:
        from ..analysis.plots import image_format

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
            [f"IC{axis + 1}", f"{result.non_gaussianity[axis]:.6g}", " ".join(ids[c] for c in top_texts),
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
                    writer.writerow([name, *(f"{v:.9g}" for v in values)])
        if plot_file:
            plot_component_tree(result, plot_file, title=f"{args.components} independent axes of {len(matrix.models)} models")
    for path in (args.out, args.loadings, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


# uncertainty ---------------------------------------------------------------------------------


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
                        [name, *(f"{v:.9g}" for v in (*result.center[index], *result.ellipse_axes[index],
                                                      result.ellipse_angle[index], result.area[index])),
                         names[result.neighbor[index]], f"{result.neighbor_stability[index]:.4f}"]
                    )
    for path in (args.out, args.csv):
        if path:
            print(f"wrote {path}")
    return 0


# outliers ------------------------------------------------------------------------------------


def _snippet(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


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
                    [ids[column], column, f"{found.z[column]:.6g}", f"{found.residual[column]:.6g}"]
                )
        print(f"wrote {args.out}")
    return 0


# registration --------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes


def register(subparsers) -> None:
    """Add the kl, map, predict, resample, add, outliers and tree subcommands."""
    kl = subparsers.add_parser(
        "kl", help="estimated KL between every pair of models, and nearest neighbours"
    )
    _add_input(kl)
    kl.add_argument("--out", required=True, help="CSV file for the K×K matrix")
    kl.add_argument(
        "--bits-per-byte", action="store_true", help="report bits per byte instead of nats per text"
    )
    kl.add_argument(
        "--neighbors",
        type=int_at_least(1),
        default=5,
        metavar="K",
        help="nearest neighbours to print (default 5)",
    )
    kl.set_defaults(func=_run_kl)

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

    resample_ = subparsers.add_parser(
        "resample", help="select texts by likelihood variance; error curve"
    )
    _add_input(resample_)
    resample_.add_argument("--n", type=int_at_least(1), help="number of draws (with replacement)")
    resample_.add_argument(
        "--method", choices=METHODS, default="ls", help="sampling distribution (default ls)"
    )
    resample_.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    resample_.add_argument("--out", help="subset JSONL: the selected texts with their scales")
    resample_.add_argument(
        "--curve", metavar="PNG", help="plot the error against n for the three methods"
    )
    resample_.add_argument(
        "--curve-sizes", type=_sizes, metavar="N1,N2,...", help="values of n for the curve"
    )
    resample_.add_argument(
        "--curve-seeds", type=int_at_least(1), default=10, help="seeds per point of the curve (default 10)"
    )
    resample_.set_defaults(func=_run_resample)

    add = subparsers.add_parser(
        "add", help="score new models on a subset only and place them on the map"
    )
    add.add_argument(
        "store", metavar="STORE", help="the map's store (or matrix) the subset was drawn from"
    )
    add.add_argument("models", metavar="MODEL", nargs="+", help="model references to score")
    add.add_argument("--subset", required=True, help="subset JSONL written by 'jaxmap resample'")
    add.add_argument(
        "--out", help="store for the new models' scores (default: SUBSET with suffix .h5)"
    )
    add.add_argument(
        "--kl-out", help="CSV of the estimated KL from each new model to each map model"
    )
    add.add_argument(
        "--neighbors",
        type=int_at_least(1),
        default=5,
        metavar="K",
        help="nearest map models to print (default 5)",
    )
    add.add_argument(
        "--bits-per-byte", action="store_true", help="report bits per byte instead of nats per text"
    )
    add.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="compute dtype of the new models (default float32)",
    )
    add.add_argument(
        "--bos-policy", choices=["full", "paper"],
        help="token scoring policy (default: the one the map's store records, else full)",
    )
    add.add_argument(
        "--batch-tokens", type=int_at_least(MIN_BUCKET), help="padded tokens per batch (default: the engine's)"
    )
    add.add_argument("--quiet", action="store_true", help="no progress bars")
    add.set_defaults(func=_run_add)

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

    tree = subparsers.add_parser(
        "tree", help="neighbour-joining or average-linkage tree of the models (Newick, dendrogram)"
    )
    _add_input(tree)
    tree.add_argument(
        "--method",
        choices=("nj", "average"),
        default="nj",
        help="neighbour joining (default) or average linkage (UPGMA)",
    )
    tree.add_argument("--out", help="Newick file (default: print the tree)")
    tree.add_argument("--plot", metavar="PNG", help="also draw the tree as a dendrogram image")
    tree.add_argument(
        "--bits-per-byte", action="store_true", help="branch lengths in bits per byte, not nats per text"
    )
    tree.set_defaults(func=_run_tree)

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
