"""``jaxmap demo``: the README's main job."""

from __future__ import annotations

import argparse
import sys

from . import int_at_least
from .scoring import add_compile_cache_option, use_compile_cache


def register(subparsers) -> None:
    from ..demo import DEFAULT_LENS_TEXTS, DEFAULT_TEXTS, DEFAULT_TRAIN_STEPS

    demo = subparsers.add_parser(
        "demo",
        help="map the packaged real models on the built-in text set (offline)",
        description="Score every installed packaged model (see scripts/install.sh) on the "
        "built-in demo texts; write the store, KL table, neighbours, map and a report. When "
        "an optional part (training, its checkpoints, the logit lens) fails, the rest is still "
        "written and the exit status is 1.",
    )
    demo.add_argument("--out", default="jaxmap-demo", help="output directory (default: %(default)s)")
    demo.add_argument("--texts", type=int_at_least(1), default=DEFAULT_TEXTS, help="number of demo texts (default: %(default)s)")
    demo.add_argument("--models", nargs="+", help="model references (default: every installed packaged model)")
    demo.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    demo.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the text sample (default: %(default)s)")
    demo.add_argument(
        "--train-steps", type=int_at_least(0), default=DEFAULT_TRAIN_STEPS,
        help="steps of the demo's small training run, whose checkpoints are scored as a path on "
        "the map (0: no training; default: %(default)s)",
    )
    demo.add_argument(
        "--logit-lens", nargs="*", metavar="MODEL",
        help="models also scored with the logit lens into lens.h5 (default: SmolLM2 if it is "
        "mapped; give the option alone for none)",
    )
    demo.add_argument(
        "--lens-texts", type=int_at_least(0), default=DEFAULT_LENS_TEXTS,
        help="demo texts of the logit-lens store (0: no logit lens; default: %(default)s)",
    )
    add_compile_cache_option(demo)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    use_compile_cache(args)
    result = run_demo(
        args.out, n_texts=args.texts, models=args.models, dtype=args.dtype, seed=args.seed,
        progress=not args.quiet, logit_lens=args.logit_lens, lens_texts=args.lens_texts,
        train_steps=args.train_steps,
    )
    # A part failed but the map and report of the rest were written: exit 1, not 2 (nothing done).
    for line in result.failures:
        print(f"jaxmap demo: error: {line}", file=sys.stderr)
    return 1 if result.failures else 0
