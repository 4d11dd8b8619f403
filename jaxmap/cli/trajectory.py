"""``jaxmap trajectory`` (a path of checkpoints or a model's logit-lens layers: KL profile and
diffusion exponents) and ``jaxmap lineage`` (fine-tuned models against their base models)."""

from __future__ import annotations

import argparse
import csv
import fnmatch
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import _checked, int_at_least

if TYPE_CHECKING:
    from ..analysis.trajectory import LineageRow, TrajectoryReport


def _fraction(text: str) -> float:
    """argparse type: a share of the texts, in [0, 1)."""
    return _checked(float, text, lambda value: 0 <= value < 1, "a fraction in [0, 1)")


def _step(text: str) -> float:
    """argparse type: a finite step of at least 0."""
    return _checked(float, text, lambda value: 0 <= value < math.inf, "a step of at least 0")


def register(subparsers) -> None:
    from .analysis import _add_input

    trajectory = subparsers.add_parser(
        "trajectory",
        help="KL along a path of checkpoints (or a model's logit-lens layers) and its diffusion exponents",
        description=(
            "Follow a path of models through the map: the estimated KL between consecutive "
            "models and to the last one, and for each start t0 the diffusion exponent c of "
            "log D(t0, t0+Δ) = c·log Δ + b over the next --window models, with D the estimated "
            "KL (log-likelihood space) and the squared weight distance (weight space, read from "
            "the checkpoints)."
        ),
    )
    _add_input(trajectory)
    chosen = trajectory.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--path", nargs="+", metavar="MODEL", help="the store's models, in order")
    chosen.add_argument(
        "--path-file", metavar="LIST",
        help="a file with one model per line in order, optionally MODEL,STEP (the training "
        "step, used as Δ); # starts a comment",
    )
    chosen.add_argument(
        "--path-glob", metavar="PATTERN",
        help="every store model matching PATTERN (fnmatch, e.g. 'run/step-*'), in natural order "
        "(numbers compared as numbers); logit-lens rows only if PATTERN contains @layer",
    )
    chosen.add_argument(
        "--layers", metavar="MODEL",
        help="the logit-lens thread of MODEL (rows MODEL@layer0 ... MODEL@layerL of `jaxmap "
        "score --logit-lens`); Δ counts layers, and there is no weight space",
    )
    trajectory.add_argument(
        "--window", type=int_at_least(1), default=10,
        help="fit over the next W models of each start (default: %(default)s; fewer near the end)",
    )
    trajectory.add_argument(
        "--min-points", type=int_at_least(2), default=3,
        help="starts with fewer usable points get no exponent (default: %(default)s)",
    )
    trajectory.add_argument(
        "--drop-top-change", type=_fraction, metavar="FRACTION",
        help="leave out this share of the texts, those whose log-likelihood changes most between "
        "consecutive models after --warmup-steps, as the papers do (default: 0.03 for a path of "
        "models, 0 for logit-lens layers)",
    )
    trajectory.add_argument(
        "--warmup-steps", type=_step, default=0.0, metavar="STEP",
        help="changes between models before this step (the table's step column) do not count "
        "for --drop-top-change (default: 0)",
    )
    trajectory.add_argument(
        "--no-weights", action="store_true",
        help="skip the weight-space exponent (it loads every checkpoint of the path)",
    )
    trajectory.add_argument(
        "--bits-per-byte", action="store_true", help="KL in bits per byte instead of nats per text"
    )
    trajectory.add_argument("--out", help="write the table as CSV")
    trajectory.add_argument("--plot", help="draw the path on the map (PNG, or another image suffix)")
    trajectory.add_argument(
        "--method", choices=["pca", "mds", "tsne"], default="pca",
        help="projection for --plot (default: %(default)s, linear, so steps keep their lengths' order)",
    )
    trajectory.add_argument("--cache-dir", help="cache for converted GGUF weights (weight space)")
    trajectory.set_defaults(func=_run_trajectory)

    lineage = subparsers.add_parser(
        "lineage",
        help="each fine-tuned model's KL to its base model and the base's rank among its neighbours",
        description=(
            "Read parent,child pairs (a CSV with columns parent and child, or the base_model "
            "field of the model cards, README.md front matter, of the store's local model "
            "directories) and report each child's estimated KL to its parent and the parent's "
            "rank among the child's nearest neighbours (1 = nearest; logit-lens rows are not ranked)."
        ),
    )
    _add_input(lineage)
    lineage.add_argument(
        "--parents", metavar="CSV",
        help="table with columns parent and child (store model names, keys or paths); default: "
        "the model cards' base_model",
    )
    lineage.add_argument(
        "--bits-per-byte", action="store_true", help="KL in bits per byte instead of nats per text"
    )
    lineage.add_argument("--out", help="write the table as CSV")
    lineage.set_defaults(func=_run_lineage)


# ---------------------------------------------------------------------------------------------
# Which rows


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_path_file(path: str) -> tuple[list[str], list[float] | None]:
    from ..errors import InputError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the path list ({getattr(error, 'strerror', None) or error})") from None
    models, steps = [], []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, comma, step = line.rpartition(",")
        if comma:
            try:
                steps.append(float(step))
            except ValueError:
                raise InputError(f"{path}, line {number}: step {step.strip()!r} is not a number") from None
            models.append(name.strip())
        else:
            models.append(line)
    if steps and len(steps) != len(models):
        raise InputError(f"{path}: give a step on every line or on none")
    if not models:
        raise InputError(f"{path}: no models listed")
    return models, (steps or None)


class _Rows:
    """The matrix's rows: their metadata, and the row a name means."""

    def __init__(self, matrix) -> None:
        from ..row_metadata import RowMetadata
        from ..store import open_store

        self.matrix = matrix
        self.store = open_store(matrix.source) if matrix.is_store else None
        # The rows of a plain matrix are models known by their names alone.
        self.metadata = (
            self.store.row_metadata if self.store is not None
            else [RowMetadata.parse(name, {}) for name in matrix.models]
        )

    def index(self, name: str) -> int:
        found = self.store.find_row(name) if self.store is not None else None
        return self.matrix.model_index(name) if found is None else found  # the error lists close names


def _choose_path(args, rows: _Rows) -> tuple[list[int], list[float] | None, str]:
    """Row indices of the path, its steps (or None) and a label."""
    from ..errors import InputError
    from ..row_metadata import logit_lens_threads

    models = rows.matrix.models
    if args.layers:
        parent = rows.metadata[rows.index(args.layers)]
        thread = logit_lens_threads(rows.metadata).get(parent.key)
        if not thread:
            raise InputError(
                f"{rows.matrix.source}: no logit-lens rows of {parent.name}; score it with "
                "`jaxmap score --logit-lens`"
            )
        return thread, [float(rows.metadata[i].step) for i in thread], f"{parent.name} layers"
    if args.path_glob:
        # Logit-lens rows share their model's name as a prefix; a glob over checkpoints means
        # the checkpoints, unless it names layers itself.
        lens_too = "@layer" in args.path_glob
        matched = sorted(
            (
                row.name for row in rows.metadata
                if fnmatch.fnmatchcase(row.name, args.path_glob) and (lens_too or not row.is_layer_row)
            ),
            key=_natural_key,
        )
        if not matched:
            raise InputError(f"{rows.matrix.source}: no model matches {args.path_glob!r}")
        return [models.index(m) for m in matched], None, args.path_glob
    if args.path_file:
        names, steps = _read_path_file(args.path_file)
        return [rows.index(n) for n in names], steps, Path(args.path_file).stem
    return [rows.index(n) for n in args.path], None, "path"


def _weight_loader(rows: _Rows, path: list[int], cache_dir):
    """Loads the t-th checkpoint of the path as a flat float32 vector, naming the model on
    failure."""
    from ..analysis.trajectory import load_flat_params
    from ..errors import InputError, JaxmapError

    def load(t: int) -> np.ndarray:
        row = rows.metadata[path[t]]
        if row.is_layer_row:
            raise InputError(f"{row.name}: a logit-lens row has no weights of its own; give --no-weights")
        try:
            return load_flat_params(row.key, cache_dir=cache_dir)
        except JaxmapError as error:
            raise InputError(
                f"{row.name}: cannot load its weights for the weight-space exponent ({error}); "
                "give --no-weights to skip it"
            ) from None

    return load


def _number(value: float, digits: int = 6, *, full: bool = False) -> str:
    """A table cell: ``digits`` significant digits to read, or every digit (``full``, for CSV
    files); blank for NaN."""
    from .analysis import _exact

    if math.isnan(value):
        return ""
    return _exact(value) if full else f"{value:.{digits}g}"


def _median(values: np.ndarray) -> str:
    fitted = values[np.isfinite(values)]
    return f"{np.median(fitted):.4g}" if fitted.size else "none (too few points)"


def _print_table(header: Sequence[str], table: list[list[str]]) -> None:
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _trajectory_cells(report: TrajectoryReport, *, full: bool) -> list[list[str]]:
    """The rows of ``jaxmap trajectory``'s table, rounded to read or in full (``--out``)."""
    return [
        [
            str(row["index"]), row["model"], _number(row["step"], full=full),
            _number(row["kl_to_next"], full=full), _number(row["kl_to_final"], full=full),
            _number(row["exponent_loglik"], 4, full=full), str(row["points_loglik"]),
            _number(row["exponent_weights"], 4, full=full), str(row["points_weights"]),
        ]
        for row in report.rows()
    ]


def _lineage_cells(results: list[LineageRow], *, full: bool) -> list[list[str]]:
    """The rows of ``jaxmap lineage``'s table, rounded to read or in full (``--out``)."""
    return [
        [
            r.child, r.parent, _number(r.kl, full=full), str(r.parent_rank), str(r.candidates),
            r.nearest, _number(r.nearest_kl, full=full),
        ]
        for r in results
    ]


def _write_csv(path: str, header: Sequence[str], table: list[list[str]]) -> None:
    from ..outputs import atomic_output

    with atomic_output(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(table)


# ---------------------------------------------------------------------------------------------
# Commands


def _run_trajectory(args: argparse.Namespace) -> int:
    from ..analysis import clip, double_center, load_loglik, project
    from ..analysis.trajectory import CHECKPOINT_DROP_TOP_CHANGE, trajectory
    from ..outputs import check_outputs
    from .analysis import _about

    inputs = [args.store] + ([args.path_file] if args.path_file else [])
    check_outputs([args.out, args.plot], inputs)
    if args.plot:
        from ..analysis.plots import image_format

        image_format(args.plot)
    matrix = load_loglik(args.store)
    rows = _Rows(matrix)
    path, steps, label = _choose_path(args, rows)
    weights = None if (args.no_weights or args.layers) else _weight_loader(rows, path, args.cache_dir)
    text_bytes = matrix.require_text_bytes() if args.bits_per_byte else None
    drop = args.drop_top_change
    if drop is None:
        # The papers filter texts for checkpoints; along logit-lens layers the largest changes
        # are the first layers' readings, not heavy-tailed texts (docs/method.md).
        layers = all(rows.metadata[i].is_layer_row for i in path)
        drop = 0.0 if layers else CHECKPOINT_DROP_TOP_CHANGE
    with _about(matrix.source):
        report = trajectory(
            matrix.loglik, path, matrix.models, steps=steps, weights=weights, window=args.window,
            min_points=args.min_points, text_bytes=text_bytes, clip_quantile=args.clip_quantile,
            drop_top_change=drop, warmup=args.warmup_steps,
        )
    unit = "bpb" if args.bits_per_byte else "nats"
    header = [
        "index", "model", "step", f"kl_to_next_{unit}", f"kl_to_final_{unit}",
        "exponent_loglik", "points_loglik", "exponent_weights", "points_weights",
    ]
    print(
        f"{matrix.source}: {len(path)} models along {label}; diffusion exponents fitted over the "
        f"next {args.window} models of each start (fewer near the end; at least "
        f"{args.min_points} points, else blank)"
    )
    if drop > 0:
        print(
            f"left out {report.dropped_texts.size} of {matrix.loglik.shape[1]} texts (fraction "
            f"{drop:g}): the largest log-likelihood change between consecutive models from step "
            f"{args.warmup_steps:g} on"
        )
    _print_table(header, _trajectory_cells(report, full=False))
    summary = f"median exponent: log-likelihood space {_median(report.loglik_fit.exponents)}"
    if report.weight_fit is not None:
        summary += f", weight space {_median(report.weight_fit.exponents)}"
    print(summary)
    if args.out:
        _write_csv(args.out, header, _trajectory_cells(report, full=True))
        print(f"table: {args.out}")
    if args.plot:
        from ..analysis.plots import plot_trajectories

        with _about(matrix.source):
            clipped, _ = clip(matrix.loglik, args.clip_quantile)
            coordinates = project(double_center(clipped), args.method)
        # The chosen path gets arrows; the other logit-lens threads are drawn for context.
        threads = [thread for thread in _threads(rows) if thread != path]
        plot_trajectories(
            coordinates, matrix.models, [path], args.plot, path_labels=[label], threads=threads,
            axis_label={"pca": "PCA", "mds": "MDS", "tsne": "t-SNE"}[args.method],
            title=f"{label} on the map of {len(matrix.models)} models",
        )
        print(f"map: {args.plot}")
    return 0


def _threads(rows: _Rows) -> list[list[int]]:
    """Every model's logit-lens rows in layer order."""
    from ..row_metadata import logit_lens_threads

    return [thread for thread in logit_lens_threads(rows.metadata).values() if len(thread) > 1]


def _read_parents(path: str) -> list[tuple[str, str]]:
    from ..errors import InputError

    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            records = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the parents table ({getattr(error, 'strerror', None) or error})") from None
    if not records or not {"parent", "child"} <= set(records[0]):
        raise InputError(f"{path}: needs a header with columns parent and child, and at least one row")
    pairs = []
    for number, record in enumerate(records, 2):
        parent, child = (record.get("parent") or "").strip(), (record.get("child") or "").strip()
        if not parent or not child:
            raise InputError(f"{path}, line {number}: empty parent or child")
        pairs.append((parent, child))
    return pairs


def _model_card_pairs(rows: _Rows) -> list[tuple[str, str]]:
    from ..analysis.trajectory import read_base_model

    pairs = []
    for row in rows.metadata:
        if not row.is_layer_row and Path(row.key).is_dir():
            base = read_base_model(row.key)
            if base:
                pairs.append((base, row.name))
    return pairs


def _run_lineage(args: argparse.Namespace) -> int:
    from ..analysis import load_loglik
    from ..analysis.trajectory import lineage
    from ..errors import InputError, StoreError
    from ..outputs import check_outputs
    from .analysis import _about

    check_outputs([args.out], [args.store] + ([args.parents] if args.parents else []))
    matrix = load_loglik(args.store)
    rows = _Rows(matrix)
    if args.parents:
        named = _read_parents(args.parents)
        source = args.parents
    else:
        named = _model_card_pairs(rows)
        source = "the model cards"
        if not named:
            raise InputError(
                f"{matrix.source}: no model card (README.md in a local model directory) names a "
                "base_model; give --parents CSV"
            )
    pairs = []
    for parent, child in named:
        try:
            pairs.append((matrix.models[rows.index(parent)], matrix.models[rows.index(child)]))
        except (InputError, StoreError) as error:  # StoreError: a name that fits several rows
            raise InputError(f"{source}: {error}") from None
    text_bytes = matrix.require_text_bytes() if args.bits_per_byte else None
    with _about(matrix.source):
        # Layers read through the logit lens are not candidate parents.
        models_only = [i for i, row in enumerate(rows.metadata) if not row.is_layer_row]
        results = lineage(
            matrix.loglik, matrix.models, pairs, text_bytes=text_bytes, among=models_only,
            clip_quantile=args.clip_quantile,
        )
    unit = "bpb" if args.bits_per_byte else "nats"
    header = ["child", "parent", f"kl_{unit}", "parent_rank", "candidates", "nearest", f"nearest_kl_{unit}"]
    print(f"{matrix.source}: {len(results)} parent/child pair(s) from {source}")
    _print_table(header, _lineage_cells(results, full=False))
    if args.out:
        _write_csv(args.out, header, _lineage_cells(results, full=True))
        print(f"table: {args.out}")
    return 0
