"""``jaxmap drop``, ``jaxmap merge`` and ``jaxmap compact``: store maintenance."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    drop = subparsers.add_parser(
        "drop",
        help="remove models' rows from a store (crash-safe)",
        description="Remove the rows of each MODEL (as listed by `jaxmap info`, or its resolved "
        "path or canonical reference) in one atomic rewrite of the store.",
    )
    drop.add_argument("store")
    drop.add_argument("models", nargs="+", metavar="MODEL")
    drop.set_defaults(func=run_drop)

    merge = subparsers.add_parser(
        "merge",
        help="join stores of one text set and settings (e.g. from `score --shard`)",
        description="Join the rows of every STORE into --out. The stores must share the text "
        "set and settings (BOS policy, dtype); a model in two stores is refused. An existing "
        "--out is extended.",
    )
    merge.add_argument("stores", nargs="+", metavar="STORE")
    merge.add_argument("--out", required=True)
    merge.set_defaults(func=run_merge)

    compact = subparsers.add_parser(
        "compact",
        help="fold a store's journal into its matrix (for plain HDF5 readers)",
        description="Rows are committed to a journal beside the store and folded into the HDF5 "
        "matrix at the end of each job; this folds them in now.",
    )
    compact.add_argument("store")
    compact.set_defaults(func=run_compact)


def run_drop(args: argparse.Namespace) -> int:
    from ..store import drop

    removed = drop(args.store, args.models)
    print(f"{args.store}: removed {len(removed)} row(s): {', '.join(removed)}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..store import merge

    store = merge(args.stores, args.out)
    print(f"{store.path}: {len(store.models)} model(s) × {len(store.text_ids)} texts")
    return 0


def run_compact(args: argparse.Namespace) -> int:
    from ..store import compact

    compact(args.store)
    print(f"{args.store}: compacted")
    return 0
