"""The distance subcommands: kl (the estimated KL between every pair of models, and each
model's nearest neighbours) and tree (a tree of the models built from it)."""

from __future__ import annotations

import argparse

from ..analysis import kl_matrix, nearest_neighbors
from ..outputs import atomic_output, atomic_outputs
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


@_checks_outputs
def _run_kl(args: argparse.Namespace) -> int:
    matrix, clipped, tau = _load_clipped(args)
    text_bytes = matrix.require_text_bytes() if args.bits_per_byte else None
    unit = "bits per byte" if args.bits_per_byte else "nats per text"
    print(_describe(matrix, tau, args))
    divergences = kl_matrix(clipped, text_bytes=text_bytes, progress=len(matrix.models) > 4096)
    with atomic_output(args.out, _inputs(args)) as temporary:
        _write_matrix_csv(temporary, matrix.models, matrix.models, divergences)
    print(f"wrote {args.out} ({unit})")
    indices, values = nearest_neighbors(divergences, args.neighbors)
    _print_neighbors(matrix.models, matrix.models, indices, values, unit)
    return 0


@_checks_outputs
def _run_tree(args: argparse.Namespace) -> int:
    from ..analysis.tree import build_tree

    if args.plot:
        from ..analysis.plots import image_format, plot_tree

        image_format(args.plot)
    matrix, clipped, tau = _load_clipped(args)
    print(_describe(matrix, tau, args))
    text_bytes = matrix.require_text_bytes() if args.bits_per_byte else None
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


def register(subparsers) -> None:
    """Add the kl and tree subcommands."""
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
