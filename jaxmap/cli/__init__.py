"""The ``jaxmap`` command: a thin layer over the Python API.

Each group of subcommands lives in its own module with a ``register(subparsers)`` function.
Errors meant for people (bad files, unsupported models, foreign stores) print one line and
exit non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from . import analysis, demo, scoring

PEOPLE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, KeyError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxmap",
        description="Map language models by their log-likelihood vectors on a fixed text set.",
    )
    parser.add_argument("--version", action="version", version=f"jaxmap {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (scoring, analysis, demo):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxmap`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("jaxmap: interrupted; finished rows are kept in the store", file=sys.stderr)
        return 130
    except PEOPLE_ERRORS as error:
        print(f"jaxmap {args.command}: error: {error}", file=sys.stderr)
        return 2
