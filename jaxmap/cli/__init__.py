"""The ``jaxmap`` command: a thin layer over the Python API.

Each group of subcommands lives in its own module with a ``register(subparsers)`` function.
Errors are handled in one place, :func:`main`: a :class:`~jaxmap.errors.JaxmapError` (an error
meant for a person) prints one line naming what is wrong and exits 2; an operating-system error
on a named file likewise; anything else is a bug and keeps its traceback. SIGINT and SIGTERM
stop the command cleanly (:mod:`.interrupts`), exiting 130 and 143.
"""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from . import interrupts

EXIT_PEOPLE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    # Imported here, after the signal handlers are in place: they pull in JAX, which takes a
    # while, and an interrupt during that must still exit cleanly.
    from . import analysis, demo, scoring, stores

    parser = argparse.ArgumentParser(
        prog="jaxmap",
        description="Map language models by their log-likelihood vectors on a fixed text set.",
    )
    parser.add_argument("--version", action="version", version=f"jaxmap {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (scoring, stores, analysis, demo):
        module.register(subparsers)
    return parser


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxmap`` console script."""
    from ..errors import JaxmapError

    previous = interrupts.install()
    command = "start-up"
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        return int(args.func(args) or 0)
    except KeyboardInterrupt as interrupt:
        interrupts.leave(command, interrupt)
    except JaxmapError as error:
        print(f"jaxmap {command}: error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_PEOPLE_ERROR
    except OSError as error:
        if error.filename is None:
            raise
        # A file the person named could not be read or written: say which, and why.
        print(f"jaxmap {command}: error: {error.filename}: {error.strerror or error}", file=sys.stderr)
        return EXIT_PEOPLE_ERROR
    finally:
        interrupts.restore(previous)
    return 1  # not reached: leave() exits
