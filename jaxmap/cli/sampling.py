"""``jaxmap true-kl``: the Monte Carlo KL between two models beside the map's estimate."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from ..errors import JaxmapError
from . import _checked, int_at_least, quantile

# Models listed in an "unknown model" error before it says how many more there are.
_LISTED = 5


def _share(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    return _checked(float, text, lambda value: 0 <= value <= 1, "a share in [0, 1]")


def _stored_model(store, row: int) -> tuple[str, int]:
    """What loads the store's model of ``row`` again, and the row; a logit-lens row is refused."""
    metadata = store.row_metadata[row]
    if metadata.is_layer_row:
        raise JaxmapError(f"{metadata.name!r} is a logit-lens layer row of {store.path}, not a model to sample from")
    return metadata.reference, row


def _lookup(store, name: str) -> tuple[str, int | None]:
    """The reference of the store's model ``name`` (found by :meth:`~jaxmap.store.Store.find_row`,
    else by the canonical key of the model reference ``name``) and its row, or ``name`` itself
    with no row when it is a model reference the store lacks."""
    from ..checkpoints import resolve

    row = store.find_row(name)
    if row is not None:
        return _stored_model(store, row)
    try:
        canonical = resolve(name).canonical
    except JaxmapError as error:
        listed = ", ".join(store.models[:_LISTED])
        more = f" and {len(store.models) - _LISTED} more" if len(store.models) > _LISTED else ""
        raise JaxmapError(
            f"unknown model {name!r}: not a model of {store.path} (which has {listed}{more}) "
            f"and not a model reference ({error})"
        ) from None
    row = store.find_row(canonical)
    return (name, None) if row is None else _stored_model(store, row)


def _map_estimate(store, row_i: int | None, row_j: int | None, clip_quantile: float) -> dict | None:
    """The map's KL estimate for the pair, nats per (map) text and bits per byte, or None."""
    if row_i is None or row_j is None:
        return None
    from ..analysis import clip, double_center
    from ..analysis.geometry import per_text_factor

    clipped, tau = clip(store.loglik, clip_quantile)
    Q = double_center(clipped)
    squared = float(np.sum((Q[row_i] - Q[row_j]) ** 2))
    texts = clipped.shape[1]
    return {
        "nats": squared * per_text_factor(texts),
        "bits_per_byte": squared * per_text_factor(texts, store.text_bytes),
        "texts": texts,
        "models": clipped.shape[0],
        "tau": tau,
    }


def _run_true_kl(args: argparse.Namespace) -> int:
    from ..analysis.true_kl import true_kl
    from ..engine import load_model
    from ..models.generation import check_length
    from ..store import open_store

    store = open_store(args.store)
    reference_i, row_i = _lookup(store, args.model_i)
    reference_j, row_j = _lookup(store, args.model_j)
    dtype = store.settings.get("dtype", "float32")
    model_i = load_model(reference_i, dtype=dtype)
    # Before the second model loads: the length is checked against the sampler's context.
    check_length(model_i.config, 1 + args.length)
    model_j = model_i if reference_j == reference_i else load_model(reference_j, dtype=dtype)
    result = true_kl(
        model_i, model_j, samples=args.samples, length=args.length, seed=args.seed,
        batch=args.batch, progress=not args.json, max_noncanonical=args.max_noncanonical,
    )
    estimate = _map_estimate(store, row_i, row_j, args.clip_quantile)
    if args.json:
        print(json.dumps({**result.summary(), "map_estimate": estimate}, indent=2))
        return 0
    print(
        f"KL({args.model_i} ‖ {args.model_j}) by sampling {result.samples} texts of "
        f"{result.length} tokens from {args.model_i} (seed {result.seed}; scored via {result.scored_via}):"
    )
    print(f"  {result.nats:.6g} ± {result.nats_se:.2g} nats per sampled text")
    print(
        f"  {result.bits_per_byte:.6g} ± {result.bits_per_byte_se:.2g} bits per byte "
        f"({result.mean_bytes:.1f} bytes per sample)"
    )
    if result.scored_via == "text":
        print(f"  {result.noncanonical:.1%} of the samples re-tokenize differently under {args.model_i}")
    if estimate is None:
        absent = args.model_i if row_i is None else args.model_j
        print(f"map's estimate: none ({absent} is not in {args.store})")
    else:
        policy = store.settings.get("bos_policy", "full")
        print(
            f"map's estimate from {args.store} ({estimate['models']} models × {estimate['texts']} texts, "
            f"clipped at quantile {args.clip_quantile:g}, BOS policy {policy}; symmetric):"
        )
        print(f"  {estimate['nats']:.6g} nats per map text, {estimate['bits_per_byte']:.6g} bits per byte")
        if math.isfinite(result.bits_per_byte) and estimate["bits_per_byte"] > 0:
            print(f"  sampled / map (bits per byte): {result.bits_per_byte / estimate['bits_per_byte']:.3g}")
    print(f"({result.seconds:.1f} s)")
    return 0


def register(subparsers) -> None:
    """Add the true-kl subcommand."""
    parser = subparsers.add_parser(
        "true-kl",
        help="KL between two models by sampling from the first, beside the map's estimate",
        description="Sample --samples texts of --length tokens from MODEL_I (temperature 1, "
        "full softmax), score them under both models and report the mean log-ratio with its "
        "standard error, in nats per sampled text and bits per byte, beside the map's estimate "
        "for the pair from STORE.",
    )
    parser.add_argument("store", metavar="STORE", help="the map's jaxmap store (.h5)")
    parser.add_argument(
        "model_i", metavar="MODEL_I", help="the model sampled from: a model of STORE or a model reference"
    )
    parser.add_argument("model_j", metavar="MODEL_J", help="the model compared: a model of STORE or a model reference")
    parser.add_argument(
        "--samples", type=int_at_least(2), required=True, metavar="N", help="texts to sample (at least 2)"
    )
    parser.add_argument(
        "--length", type=int_at_least(1), default=64, metavar="T", help="tokens per sampled text (default 64)"
    )
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    parser.add_argument(
        "--batch", type=int_at_least(1), metavar="B", help="texts sampled per compiled call (default 32)"
    )
    parser.add_argument(
        "--clip-quantile", type=quantile, default=0.02, metavar="Q",
        help="clip quantile of the map's estimate (default 0.02, as `jaxmap kl`)",
    )
    # The default is true_kl's MAX_NONCANONICAL, written out: importing it here would load JAX
    # for every command's --help.
    parser.add_argument(
        "--max-noncanonical", type=_share, default=0.1, metavar="F",
        help="with different tokenizers, refuse when more than this share of the samples are not "
        "MODEL_I's own cut of their text (default 0.1; 1 never refuses)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(func=_run_true_kl)
