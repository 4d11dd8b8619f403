"""The subset subcommands: resample (draw texts by likelihood variance, and the error curve of
such draws) and add (score new models on a drawn subset only and place them on the map)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..analysis import (
    AnalysisError,
    MapInfo,
    double_center,
    resample,
    resampling_curve,
    write_subset,
)
from ..analysis.resampling import METHODS
from ..batching import MIN_BUCKET
from ..outputs import atomic_output, atomic_outputs, check_outputs
from . import int_at_least
from .analysis import (
    _about,
    _add_input,
    _checks_outputs,
    _describe,
    _inputs,
    _load_clipped,
    _print_neighbors,
    _write_matrix_csv,
)


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
            write_subset(subset_file, matrix.text_ids, matrix.texts, *subset, contexts=matrix.contexts)
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


def _run_add(args: argparse.Namespace) -> int:
    from ..placement import add_models

    if (args.subset is None) == (args.target_se is None):
        raise AnalysisError("give --subset SUBSET or --target-se X (not both)")
    if args.target_se is not None:
        out = Path(args.out) if args.out else Path("adaptive-add")
        check_outputs([args.kl_out], _inputs(args))
    else:
        out = Path(args.out) if args.out else Path(args.subset).with_suffix(".h5")
        check_outputs([out, args.kl_out], _inputs(args))  # the default --out too, before any work
    placement = add_models(
        args.store,
        args.subset,
        args.models,
        target_se=args.target_se,
        k=args.k,
        method=args.method,
        seed=args.seed,
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
    if placement.se is not None:
        for name, se, kl, reason in zip(placement.models, placement.se, placement.kl, placement.finished):
            nearest = np.argsort(kl, kind="stable")[: args.k]
            print(
                f"{name}: SE {se[nearest].max():.4g} {placement.unit} on its {args.k} nearest "
                f"(target {args.target_se:g}; {'stopped: ' + reason if reason else 'not finished'})"
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
    """Add the resample and add subcommands."""
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
    add.add_argument("--subset", help="subset JSONL written by 'jaxmap resample'")
    add.add_argument(
        "--target-se", type=float, metavar="X",
        help="instead of --subset: score importance-drawn texts in rounds until the SE of the "
        "KL to the K nearest map models is at most X",
    )
    add.add_argument(
        "--k", type=int_at_least(1),
        help="with --target-se: nearest map models whose KL must reach the target (default 5, or "
        "every map model on a smaller map)",
    )
    add.add_argument(
        "--method", choices=METHODS, default="ls",
        help="with --target-se: sampling distribution of the texts (default ls)",
    )
    add.add_argument(
        "--seed", type=int_at_least(0), default=0, help="with --target-se: seed of the draws (default 0)"
    )
    add.add_argument(
        "--out", help="store for the new models' scores (default: SUBSET with suffix .h5); with "
        "--target-se a directory whose state a rerun continues (default adaptive-add)"
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
