"""Multi-host runs: one jaxmap process per host, joined with ``jax.distributed``.

Every process runs the same job over the same model list and texts; together they hold one
device mesh spanning all hosts, so each model is loaded once, sharded over every device, and
each batch is split over the hosts. Process 0 alone opens the store for writing: it decides
which models are still missing and shares that with the others, and it commits the rows.

**Failures seen by one process.** The processes meet at a few points of a job (after validating
the models, before and after each model's scoring, at each commit) through the coordination
service's key-value store, not through device collectives, so that a process waiting there can
also learn that another one failed. At each meeting every process gives its own outcome:

- a model that one process cannot validate, load or tokenize (its copy of the files is damaged,
  a host's hub cache lacks it) fails on every process with the same reason, naming the process
  when not every process saw it, and the job goes on with the next model (:func:`gather`,
  :func:`merged_reason`);
- anything else that stops one process (an error meant for a person, a full disk on process 0,
  SIGINT/SIGTERM, a bug, a failure inside the work the processes do together) stops them all:
  :func:`together` posts one stop record naming the process, every process raises the same
  error (:class:`ProcessFailedError`, or :class:`StoppedByProcess` for a signal), and a watchdog
  thread ends a process that cannot raise it within :data:`STOP_GRACE_S` seconds (busy loading,
  or waiting inside a collective) with the same line. Rows committed before stay.

A process that dies without a word (SIGKILL, the out-of-memory killer) posts nothing: the others
stop when their next collective fails (the peer's connection is reset), or when JAX's
coordination service misses its heartbeats (100 s) and ends them.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Callable, NoReturn

from .errors import JaxmapError

class DistributedError(JaxmapError, RuntimeError):
    """A multi-host set-up that cannot start; the message says which setting is wrong."""


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_seconds: int = 300,
) -> None:
    """Join the other processes of a multi-host run (call before any other JAX work).

    With ``coordinator`` (``HOST:PORT`` of process 0), ``num_processes`` and ``process_id``
    are required. Without it, JAX detects the cluster from the launcher's environment
    (SLURM, Open MPI, ...).
    """
    import jax

    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise DistributedError(f"--coordinator {coordinator!r}: expected HOST:PORT, e.g. 10.0.0.1:1234")
        if num_processes is None or process_id is None:
            raise DistributedError("--coordinator needs --num-processes and --process-id too")
        if not 0 <= process_id < num_processes:
            raise DistributedError(
                f"--process-id {process_id} is outside 0..{num_processes - 1} (--num-processes {num_processes})"
            )
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_seconds,
        )
    except (RuntimeError, ValueError) as error:
        where = coordinator or "the cluster's coordinator"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DistributedError(f"cannot join the multi-host run at {where}: {first}") from None


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count() -> int:
    import jax

    return jax.process_count()


# How long a watchdog lets the main thread stop on its own once another process posted a stop,
# before it ends the process itself; how long a failing process waits for the others to see its
# stop; how long process 0, which hosts the coordination service, waits for the others to leave
# before it leaves (the others' JAX clients abort when the service goes away under them).
STOP_GRACE_S = 5.0
ACK_TIMEOUT_S = 10.0
LEAVE_TIMEOUT_S = 5.0
_POLL_S = 0.2  # how often a waiting process looks for a stop record


class ProcessFailedError(DistributedError):
    """One process of a multi-host run failed and the job stopped on every process; the message,
    the same on every process, names the process (``process 1 of 2: ...``)."""


class StoppedByProcess(KeyboardInterrupt):
    """Another process of a multi-host run was stopped by SIGINT or SIGTERM: this one stops as it
    does (``signum``; ``where`` names the process)."""

    def __init__(self, signum: int, where: str) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.where = where


@dataclass
class _Stop:
    """What stopped a multi-host job: posted once, by the process that saw it."""

    process: int
    count: int
    kind: str  # "error" or "interrupt"
    message: str = ""
    signum: int = 0

    @property
    def where(self) -> str:
        return f"process {self.process} of {self.count}"

    def exception(self) -> BaseException:
        """The exception every process raises for this stop."""
        if self.kind == "interrupt":
            return StoppedByProcess(self.signum, self.where)
        return ProcessFailedError(f"{self.where}: {self.message}")


def joined() -> bool:
    """Whether this process is one of several joined with ``jax.distributed`` (cheap: no JAX
    backend is started)."""
    state = _global_state()
    return state is not None and state.client is not None and (state.num_processes or 1) > 1


def _global_state():
    module = sys.modules.get("jax._src.distributed")
    return getattr(module, "global_state", None)


def _client():
    return _global_state().client


def _where() -> tuple[int, int]:
    state = _global_state()
    return state.process_id, state.num_processes


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _deadline_passed(error: Exception) -> bool:
    return "DEADLINE_EXCEEDED" in str(error)


def _try_get(key: str) -> str | None:
    try:
        return _client().key_value_try_get(key)
    except Exception:  # noqa: BLE001 - NOT_FOUND, or the service is gone: nothing to read
        return None


def _set(key: str, value: str) -> bool:
    try:
        _client().key_value_set(key, value, allow_overwrite=True)
        return True
    except Exception:  # noqa: BLE001 - the service is gone; the caller goes on without it
        return False


# The commit lock: a watchdog never ends process 0 in the middle of a commit.
_commit_lock = threading.Lock()


def committing():
    """Hold while committing rows: a watchdog ending this process waits for the commit to finish
    (a no-op context outside multi-host runs)."""
    return _commit_lock if joined() else _NOTHING


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


_NOTHING = _Nothing()


def _default_forced_stop(error: BaseException) -> NoReturn:
    signum = getattr(error, "signum", None)
    sys.stderr.write(f"jaxmap: {error}\n" if signum is None else f"jaxmap: stopped by {error} on {error.where}\n")
    exit_now(128 + signum if signum is not None else 2)


_forced_stop: Callable[[BaseException], NoReturn] = _default_forced_stop


def on_forced_stop(handler: Callable[[BaseException], NoReturn]) -> None:
    """How a watchdog ends this process: ``handler(error)`` prints the error's line, as the
    main thread would, and leaves (:func:`exit_now`). The CLI sets its own."""
    global _forced_stop
    _forced_stop = handler


def exit_now(status: int) -> NoReturn:
    """Flush the output and leave with ``status`` without tearing the interpreter down.

    In a multi-host run that stops, JAX's shutdown at exit would wait (minutes) for processes
    that already left. Each process says that it leaves; process 0 hosts the coordination
    service and leaves last (at most :data:`LEAVE_TIMEOUT_S` seconds after the others).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream: nothing left to flush
            pass
    if joined():
        me, count = _where()
        _set(f"jaxmap/left/{me}", "1")
        if me == 0:
            deadline = time.monotonic() + LEAVE_TIMEOUT_S
            for other in range(1, count):
                while _try_get(f"jaxmap/left/{other}") is None and time.monotonic() < deadline:
                    time.sleep(0.05)
            time.sleep(0.2)  # their os._exit, after they said so
    os._exit(status)


class _Run:
    """One guarded multi-host job: its stop record, and the watchdog that reads it."""

    generation = 0

    def __init__(self) -> None:
        _Run.generation += 1
        self.me, self.count = _where()
        self.stop_key = f"jaxmap/run{_Run.generation}/stop"
        self.ack_prefix = f"jaxmap/run{_Run.generation}/seen/"
        self.taken = threading.Event()  # the main thread raises the stop itself
        self.finished = threading.Event()
        self.watchdog = threading.Thread(target=self._watch, name="jaxmap-stop-watchdog", daemon=True)
        self.watchdog.start()

    def read_stop(self) -> _Stop | None:
        raw = _try_get(self.stop_key)
        return _Stop(**json.loads(raw)) if raw else None

    def take(self, stop: _Stop) -> BaseException:
        """This process stops for ``stop``, posted by another one."""
        _set(self.ack_prefix + str(self.me), "1")
        self.taken.set()
        return stop.exception()

    def check(self) -> None:
        """Raise the stop another process posted, if any."""
        stop = self.read_stop()
        if stop is not None and stop.process != self.me:
            raise self.take(stop)

    def _watch(self) -> None:
        while not self.finished.wait(_POLL_S * 2):
            stop = self.read_stop()
            if stop is None or stop.process == self.me:
                continue
            _set(self.ack_prefix + str(self.me), "1")
            if self.taken.wait(STOP_GRACE_S) or self.finished.is_set():
                return
            # The main thread is busy (loading, compiling) or waits inside a collective that
            # will never complete: end the process here, with the line it would have printed.
            _commit_lock.acquire(timeout=60)
            _forced_stop(stop.exception())

    def settle(self, error: BaseException) -> BaseException:
        """The exception this process raises for ``error``: the stop another process posted, or
        this process's own, posted for the others (and seen by them) first."""
        if getattr(error, "agreed", False) or isinstance(error, (ProcessFailedError, StoppedByProcess)):
            self.taken.set()
            return error  # raised alike on every process already
        stop = self._own_stop(error)
        try:
            _client().key_value_set(self.stop_key, json.dumps(asdict(stop)), allow_overwrite=False)
        except Exception:  # noqa: BLE001 - another process posted first, or the service is gone
            posted = self.read_stop()
            if posted is not None and posted.process != self.me:
                return self.take(posted)  # this error follows from that one
        else:
            self._wait_for_acks()
        self.taken.set()
        if not isinstance(error, (KeyboardInterrupt, JaxmapError)):
            traceback.print_exception(error)  # a bug: its traceback stays on this process's stderr
        if stop.kind == "interrupt":
            error.where = stop.where  # the CLI names the process in its line
            return error
        return stop.exception()

    def _own_stop(self, error: BaseException) -> _Stop:
        if isinstance(error, KeyboardInterrupt):
            return _Stop(self.me, self.count, "interrupt", signum=int(getattr(error, "signum", signal.SIGINT)))
        if isinstance(error, JaxmapError):
            return _Stop(self.me, self.count, "error", _one_line(str(error)))
        # A bug: its traceback stays on this process's stderr (printed by settle).
        return _Stop(
            self.me, self.count, "error",
            f"{type(error).__name__}: {_first_line(error)} (a bug in jaxmap; the traceback is on "
            f"process {self.me}'s stderr)",
        )

    def _wait_for_acks(self) -> None:
        deadline = time.monotonic() + ACK_TIMEOUT_S
        for other in range(self.count):
            if other == self.me:
                continue
            while _try_get(self.ack_prefix + str(other)) is None and time.monotonic() < deadline:
                time.sleep(0.05)

    def finish(self) -> None:
        self.finished.set()
        self.taken.set()
        self.watchdog.join(timeout=2 * _POLL_S + 1)


_current: _Run | None = None


def stopped_by_interrupt(error: BaseException) -> bool:
    """Whether ``error`` stops the job for an interrupt: SIGINT or SIGTERM on this process, or in a
    multi-host run on another one. A process waiting inside a collective when another process
    leaves for its signal sees the collective fail with some other error, before
    :func:`together` raises the interrupt the other process posted."""
    if isinstance(error, KeyboardInterrupt):
        return True
    run = _current
    stop = run.read_stop() if run is not None else None
    return stop is not None and stop.process != run.me and stop.kind == "interrupt"


def together(function):
    """Decorate a function that every process of a multi-host run calls alike (a job): a failure
    of any one process stops every process with the same error, naming the process.

    Outside multi-host runs, or within another such function, ``function`` runs as it is.
    """

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        global _current
        if _current is not None or not joined():
            return function(*args, **kwargs)
        _current = run = _Run()
        try:
            return function(*args, **kwargs)
        except BaseException as error:
            settled = run.settle(error)
            if settled is error:
                raise
            raise settled from error
        finally:
            run.finish()
            _current = None

    return guarded


class _OutOfStep(DistributedError):
    agreed = True  # every process reads the same values, so every process raises it alike


_gathered = 0  # meetings so far: every process meets the others in the same order


def gather(name: str, value) -> list:
    """Every process's ``value`` (JSON), in process order, once each process has given its own;
    ``[value]`` outside multi-host runs. ``name`` says which meeting this is: processes that
    meet at different ones are a bug, refused alike on every process.

    While waiting, a process raises the stop another process posted (see :func:`together`).
    """
    global _gathered
    if not joined():
        return [value]
    client = _client()
    me, count = _where()
    _gathered += 1
    prefix = f"jaxmap/meet/{_gathered}/"
    client.key_value_set(prefix + str(me), json.dumps([name, value]))
    values: list = []
    for other in range(count):
        if other == me:
            values.append([name, value])
            continue
        while True:
            try:
                values.append(json.loads(client.blocking_key_value_get(prefix + str(other), int(_POLL_S * 1000))))
                break
            except Exception as error:  # noqa: BLE001 - JAX raises one type for every failure
                if not _deadline_passed(error):
                    raise DistributedError(
                        f"lost the coordination service of the multi-host run: {_first_line(error)}"
                    ) from None
            if _current is not None:
                _current.check()
    # Each process has read the previous meeting's values before giving this one's.
    try:
        client.key_value_delete(f"jaxmap/meet/{_gathered - 1}/{me}")
    except Exception:  # noqa: BLE001 - a leftover key costs a few bytes
        pass
    names = [n for n, _ in values]
    if len(set(names)) > 1:
        at = ", ".join(f"process {p} at {n!r}" for p, n in enumerate(names))
        raise _OutOfStep(f"the processes are out of step ({at}); a bug in jaxmap")
    return [v for _, v in values]


def share_from_first(value):
    """``value`` as process 0 has it, on every process (small JSON-serialisable values)."""
    if not joined():
        return value
    return gather("share", value if process_index() == 0 else None)[0]


def merged_reason(reasons: list[str | None]) -> str | None:
    """One reason for a model from every process's (None: no failure there): the reason itself
    when every process failed alike, else the first failing process's, naming it."""
    failed = [(process, reason) for process, reason in enumerate(reasons) if reason is not None]
    if not failed:
        return None
    if len(failed) == len(reasons) and len({reason for _, reason in failed}) == 1:
        return failed[0][1]
    process, reason = failed[0]
    return f"process {process} of {len(reasons)}: {reason}"
