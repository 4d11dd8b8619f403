"""SIGINT and SIGTERM for the ``jaxmap`` command: stop cleanly once, stop at once the second time.

The first signal raises :class:`Interrupted` in the main thread (a ``KeyboardInterrupt``, so
``except Exception`` blocks that record a model's failure do not swallow it). The job abandons
the model in progress, whose row was never committed; every committed row stays. The command
then prints one line and leaves with ``os._exit``: a background loader thread may be inside XLA
or safetensors, and tearing the interpreter down around it is what crashed before.

A second signal while stopping leaves at once, with the same exit status: nothing is half
written at any moment (rows are committed atomically), so there is nothing left to protect.

Two places must not see the exception, so the first signal is held back there and raised a
moment later by a SIGALRM timer, in the command's own code:

- an import in progress: raised inside a module being initialised (numpy's and jaxlib's compiled
  modules among them) it leaves that module half built, and what follows is an ImportError, an
  abort or a segmentation fault, or a library's broad ``except`` swallows it and the command
  runs on as if no signal had come;
- a garbage-collector callback (JAX registers one; it runs often while JAX is being imported):
  Python drops a handler's exception there and only prints "Exception ignored", so
  :func:`install` also hooks ``sys.unraisablehook`` to catch it.
"""

from __future__ import annotations

import os
import signal
import sys

_HANDLED = (signal.SIGINT, signal.SIGTERM)
_REDELIVERY_DELAY_S = 0.02
_held: list[int] = []  # the first signal, while it is held back


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


def _stop_now(signum: int, _frame) -> None:
    sys.stderr.write(f"jaxmap: {signal.Signals(signum).name} again; stopping now\n")
    sys.stderr.flush()
    os._exit(exit_status(signum))


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _raise_later(signum: int) -> None:
    _held[:] = [signum]
    signal.setitimer(signal.ITIMER_REAL, _REDELIVERY_DELAY_S)


def _raise_unless_importing(signum: int, frame) -> None:
    if _importing(frame):
        _raise_later(signum)
        return
    _held.clear()
    raise Interrupted(signum)


def _first(signum: int, frame) -> None:
    for handled in _HANDLED:
        signal.signal(handled, _again)
    _raise_unless_importing(signum, frame)


def _again(signum: int, frame) -> None:
    if _held:  # the first one is still held back: this is still that stop
        _raise_unless_importing(_held[0], frame)
        return
    _stop_now(signum, frame)


def _raise_held(_signum: int, frame) -> None:
    if _held:
        _raise_unless_importing(_held[0], frame)


def _unraisable_hook(previous_hook):
    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            # Raising here would be dropped too; a timer raises it once this hook has returned.
            _raise_later(unraisable.exc_value.signum)
            return
        previous_hook(unraisable)

    return hook


def install() -> dict:
    """Route SIGINT and SIGTERM through :class:`Interrupted`; returns the previous handlers.

    Only the main thread can set handlers; elsewhere (a command run from a worker thread)
    nothing changes.
    """
    try:
        previous = {handled: signal.signal(handled, _first) for handled in _HANDLED}
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, _raise_held)
    except ValueError:
        return {}
    previous["unraisablehook"] = sys.unraisablehook
    sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
    return previous


def reclaim() -> None:
    """Route SIGINT and SIGTERM through this module again after a library took them over.

    ``jax.distributed.initialize`` starts JAX's preemption notifier, whose own SIGTERM handler
    only logs the signal: a multi-host ``jaxmap score`` would run on when asked to stop.
    """
    for handled in _HANDLED:
        current = signal.getsignal(handled)
        if current in (_first, _again):
            signal.signal(handled, current)


def restore(previous: dict) -> None:
    """Put back the handlers :func:`install` replaced."""
    signal.setitimer(signal.ITIMER_REAL, 0)  # a held signal's timer must not outlive its handler
    _held.clear()
    hook = previous.pop("unraisablehook", None)
    if hook is not None:
        sys.unraisablehook = hook
    for handled, handler in previous.items():
        signal.signal(handled, handler)


def leave(command: str, interrupt: KeyboardInterrupt) -> None:
    """Print what is kept and exit with 130 or 143, skipping interpreter teardown."""
    signum = getattr(interrupt, "signum", signal.SIGINT)
    # A command that leaves outputs of its own (`jaxmap train`'s checkpoints) says which.
    outcome = getattr(interrupt, "outcome", None)
    # In a multi-host run every process prints this line, naming the process signalled.
    name = signal.Signals(signum).name + (f" on {interrupt.where}" if getattr(interrupt, "where", None) else "")
    sys.stdout.flush()
    sys.stderr.write(
        f"jaxmap {command}: stopped by {name}; {outcome}\n"
        if outcome
        else f"jaxmap {command}: stopped by {name}; committed rows are kept "
        "(a model still being scored was not stored)\n"
        if command in ("score", "add", "demo")
        else f"jaxmap {command}: stopped by {name}; no output was changed\n"
    )
    sys.stderr.flush()
    distributed = sys.modules.get("jaxmap.distributed")
    if distributed is not None:  # a multi-host run: process 0 leaves last
        distributed.exit_now(exit_status(signum))
    os._exit(exit_status(signum))
