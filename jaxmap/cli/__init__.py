"""The ``jaxmap`` command: a thin layer over the Python API.

Each group of subcommands lives in its own module with a ``register(subparsers)`` function.
Errors are handled in one place, :func:`main`: a :class:`~jaxmap.errors.JaxmapError` (an error
meant for a person) prints one line, ``jaxmap COMMAND: error: MESSAGE``, and exits 2; so does a
usage error caught by argparse. Anything else is a bug and keeps its traceback. SIGINT and
SIGTERM stop the command cleanly (:mod:`.interrupts`), exiting 130 and 143; output cut off by
its reader (``| head``) ends the command quietly with 141.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from .._version import __version__
from . import interrupts

EXIT_PEOPLE_ERROR = 2
EXIT_BROKEN_PIPE = 128 + 13  # as if killed by SIGPIPE, the shell's convention


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported on one line like every other error, and an
    unrecognized argument reported by the subcommand it was given to."""

    commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str):
        self.exit(
            EXIT_PEOPLE_ERROR, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n"
        )

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            parser = self.commands.get(getattr(parsed, "command", None), self)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed


def _checked(convert, text: str, accept, what: str):
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer of at least ``minimum``."""
    what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"

    def convert(text: str) -> int:
        return _checked(int, text, lambda value: value >= minimum, what)

    return convert


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    return _checked(float, text, lambda value: 0 < value < float("inf"), "a positive number")


def quantile(text: str) -> float:
    """argparse type: a number in [0, 1)."""
    return _checked(float, text, lambda value: 0 <= value < 1, "a quantile in [0, 1)")


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxmap`` argument parser with every subcommand."""
    # Imported here, after the signal handlers are in place: they pull in JAX, which takes a
    # while, and an interrupt during that must still exit cleanly.
    from . import accuracy, demo, distances, interpreting, maps, planning, sampling, scoring, stores
    from . import subsets, training, trajectory

    parser = _Parser(
        prog="jaxmap",
        description="Map language models by their log-likelihood vectors on a fixed text set.",
    )
    parser.add_argument("--version", action="version", version=f"jaxmap {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show other libraries' warnings and log messages (hidden by default)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        scoring, planning, stores, distances, maps, subsets, interpreting, demo, training,
        trajectory, sampling, accuracy,
    ):
        module.register(subparsers)
    parser.commands = subparsers.choices
    return parser


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def error_line(command: str, error: BaseException) -> str:
    """The one line an error meant for a person prints: ``jaxmap COMMAND: error: MESSAGE``."""
    return f"jaxmap {command}: error: {_one_line(str(error))}"


def leave_run(status: int) -> None:
    """In a multi-host run, leave now with ``status`` (:func:`jaxmap.distributed.exit_now`):
    JAX's shutdown at exit would wait for processes that already left. Elsewhere nothing."""
    distributed = sys.modules.get("jaxmap.distributed")
    if distributed is not None and distributed.joined():
        distributed.exit_now(status)


def _expand_home(args: argparse.Namespace) -> None:
    """A ``~`` the shell left alone (quoted, or after ``--opt=``) names the home folder here too,
    in every path argument: store, texts, models, outputs."""

    def expanded(value):
        return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value

    for name, value in vars(args).items():
        setattr(args, name, [expanded(v) for v in value] if isinstance(value, list) else expanded(value))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxmap`` console script; returns the exit status.

    A usage error raises ``SystemExit(2)`` after printing its one line, as argparse does.
    """
    from ..errors import JaxmapError

    previous = interrupts.install()
    command = "start-up"
    arguments = sys.argv[1:] if argv is None else argv
    try:
        # Imported once the signal handlers are in place: an interrupt during these imports
        # (logging, re) must exit cleanly too.
        import contextlib

        from . import quiet

        noise = contextlib.nullcontext() if quiet.wants_verbose(arguments) else quiet.quiet_third_parties()
        with noise:
            args = build_parser().parse_args(arguments)
            _expand_home(args)
            command = args.command
            return int(args.func(args) or 0)
    except KeyboardInterrupt as interrupt:
        interrupts.leave(command, interrupt)
    except JaxmapError as error:
        print(error_line(command, error), file=sys.stderr)
        leave_run(EXIT_PEOPLE_ERROR)
        return EXIT_PEOPLE_ERROR
    except BrokenPipeError:
        # The reader stopped reading (`jaxmap info STORE | head`): not an error, so no message.
        # What is still buffered goes nowhere, else flushing it at exit fails again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    finally:
        interrupts.restore(previous)
    return 1  # not reached: leave() exits
