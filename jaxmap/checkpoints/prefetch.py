"""Hub weights downloaded ahead of the scoring, a bounded number of models ahead, under a disk budget.

A job scores models one after another. :class:`WeightPrefetcher` downloads the weights of the
next ones in background threads while the current one scores, so that a 1,000-model job on the
hub spends its time computing, not waiting for downloads::

    with WeightPrefetcher(checkpoints, ahead=2, delete_after=True) as prefetcher:
        while (checkpoint := prefetcher.take_next()) is not None:
            try:
                prefetcher.wait(checkpoint)      # in the loader thread: weights on disk
                ...load and score...
            except JaxmapError as error:
                ...record the failure and go on...
            finally:
                prefetcher.release(checkpoint)   # frees its share of the budget (and its files)

Downloads start in the checkpoints' order. At most ``ahead + 1`` models' weights are downloading
or downloaded and not yet released (the one being scored and ``ahead`` after it), and a download
starts only while the bytes of those models plus its own stay within ``disk_budget``; otherwise it
waits until earlier models are released. Sizes come from the hub's file listing, fetched when the
reference was resolved, so none of this asks the hub anything. Local directories, GGUF files and
hub models already in the cache need no download and are ready at once.

:meth:`WeightPrefetcher.take_next` says which model to score next: the first in order whose
download is over (ready or failed), else the first in order. A model whose download stalls thus
holds up no model that is ready: local models score while it downloads, and it fails when the hub
module's minimum download rate or timeout stops it.

A download that fails (gated or missing files, an unreachable host, a damaged file) is a failure
of that model only: :meth:`WeightPrefetcher.wait` raises its error (a
:class:`~jaxmap.errors.JaxmapError` naming the model), :attr:`WeightPrefetcher.failures` records
the reason, and the next downloads go on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from ..errors import CheckpointError

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

__all__ = ["WeightPrefetcher"]


@dataclass(eq=False)
class _Entry:
    checkpoint: Checkpoint
    size: int  # bytes to download
    needs_download: bool
    state: str = "waiting"  # waiting → downloading → ready | failed
    taken: bool = False  # handed out by take_next()
    released: bool = False
    error: Exception | None = None
    seconds: float = 0.0  # the download's, once over
    thread: threading.Thread | None = None
    done: threading.Event = field(default_factory=threading.Event)


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB"


class WeightPrefetcher:
    """Downloads upcoming hub checkpoints' weights in background threads (see the module docstring).

    Args:
        checkpoints: the models in the order they will be scored (distinct canonical keys).
        ahead: how many models after the oldest unreleased one may download at the same time.
        disk_budget: bytes of weights downloading or downloaded and not yet released. A model
            whose weights alone exceed it fails, naming the budget. Default: ``ahead + 1`` times
            the largest download, so that only the ``ahead`` limit holds downloads back. Without
            ``delete_after`` a released model's files stay in the hub cache and no longer count:
            the budget then bounds the downloads ahead, not the cache.
        delete_after: :meth:`release` deletes the weight files this process downloaded for the
            model (never files that were in the hub cache before, local directories or
            converted GGUF files).
        ready_first: :meth:`take_next` prefers models whose download is over to earlier ones
            still downloading. False keeps the checkpoints' order, for processes that must all
            load the models in one order (a multi-host job).
    """

    def __init__(
        self,
        checkpoints: Iterable[Checkpoint],
        *,
        ahead: int = 2,
        disk_budget: int | None = None,
        delete_after: bool = False,
        ready_first: bool = True,
    ) -> None:
        if ahead < 0:
            raise ValueError(f"ahead must be 0 or more, not {ahead}")
        self.ahead = ahead
        self.delete_after = delete_after
        self.ready_first = ready_first
        self._entries: dict[str, _Entry] = {}
        for checkpoint in checkpoints:
            if checkpoint.canonical in self._entries:
                raise ValueError(f"{checkpoint.reference}: scheduled twice (canonical key {checkpoint.canonical})")
            pending = checkpoint.weights_pending
            entry = _Entry(checkpoint, checkpoint.download_bytes() if pending else 0, pending)
            if not pending:
                entry.state = "ready"
                entry.done.set()
            self._entries[checkpoint.canonical] = entry
        largest = max((e.size for e in self._entries.values()), default=0)
        self.disk_budget: int = disk_budget if disk_budget is not None else (ahead + 1) * largest
        if self.disk_budget < 0:
            raise ValueError(f"disk_budget must be 0 or more bytes, not {disk_budget}")
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._closed = False
        with self._lock:
            self._start_what_fits()

    # -- scheduling (called with the lock held) -------------------------------------------

    def _holding(self) -> list[_Entry]:
        return [
            e for e in self._entries.values()
            if e.needs_download and not e.released and e.state in ("downloading", "ready")
        ]

    def _start_what_fits(self) -> None:
        holding = self._holding()
        held = sum(e.size for e in holding)
        for entry in self._entries.values():
            if entry.state != "waiting" or entry.released:
                continue
            if self._closed or len(holding) > self.ahead:
                return
            if entry.size > self.disk_budget:
                self._fail(entry, CheckpointError(
                    f"{entry.checkpoint.reference}: its weights ({_gigabytes(entry.size)}) exceed the disk "
                    f"budget ({_gigabytes(self.disk_budget)})"
                ))
                continue
            if held + entry.size > self.disk_budget:
                return  # in order: a later, smaller model must not take the budget this one waits for
            entry.state = "downloading"
            entry.thread = threading.Thread(
                target=self._download, args=(entry,), daemon=True,
                name=f"jaxmap-prefetch-{entry.checkpoint.reference}",
            )
            entry.thread.start()
            holding.append(entry)
            held += entry.size

    def _fail(self, entry: _Entry, error: Exception) -> None:
        entry.state, entry.error = "failed", error
        entry.done.set()

    # -- the download thread --------------------------------------------------------------------

    def _download(self, entry: _Entry) -> None:
        error: Exception | None = None
        started = time.perf_counter()
        try:
            entry.checkpoint.fetch_weights(cancel=self._cancel)
        except Exception as caught:  # noqa: BLE001 - recorded; wait() raises it in the job's thread
            error = caught
        with self._lock:
            entry.seconds = time.perf_counter() - started
            if error is None:
                entry.state = "ready"
                entry.done.set()
            else:
                self._fail(entry, error)
            # Released while downloading, failed halfway, or the job is over: nobody will score
            # from these files.
            if self.delete_after and (entry.released or error is not None or self._closed):
                # Deleted before the next download starts, so that the budget holds on disk.
                entry.checkpoint.release_weights()
            self._start_what_fits()

    # -- the job's side ---------------------------------------------------------------------------

    def _entry(self, checkpoint: Checkpoint) -> _Entry:
        try:
            return self._entries[checkpoint.canonical]
        except KeyError:
            raise ValueError(f"{checkpoint.reference} is not scheduled in this prefetcher") from None

    def take_next(self) -> Checkpoint | None:
        """The model to score next, of those not taken yet (None when all are): the first in
        order whose download is over (weights on disk, or failed), else the first in order; with
        ``ready_first=False`` always the first in order.

        Waiting for a model taken while it still downloads does not deadlock: every model before
        it was taken, so its download starts once they are released.
        """
        with self._lock:
            untaken = [e for e in self._entries.values() if not e.taken]
            if not untaken:
                return None
            over = (e for e in untaken if e.done.is_set()) if self.ready_first else iter(())
            chosen = next(over, untaken[0])
            chosen.taken = True
            return chosen.checkpoint

    def wait(self, checkpoint: Checkpoint, timeout: float | None = None) -> Checkpoint:
        """Block until ``checkpoint``'s weights are on disk; return it.

        Raises the download's error (a :class:`~jaxmap.errors.JaxmapError` naming the model for a
        gated, missing or damaged model, an unreachable host, a model over the disk budget), and
        :class:`TimeoutError` after ``timeout`` seconds. A model whose turn has not come waits for
        earlier models to be released, so the thread that releases them must not be the one
        waiting here.
        """
        entry = self._entry(checkpoint)
        if not entry.done.wait(timeout):
            raise TimeoutError(f"{checkpoint.reference}: weights not downloaded after {timeout:g} s")
        if entry.error is not None:
            raise entry.error
        return entry.checkpoint

    def release(self, checkpoint: Checkpoint) -> int:
        """Mark ``checkpoint`` done (scored or failed) and start the downloads that now fit.

        With ``delete_after`` its downloaded weight files are deleted (at once, or when a
        download still in progress ends). Returns the bytes freed now. Releasing twice is
        harmless.
        """
        entry = self._entry(checkpoint)
        with self._lock:
            entry.released = True
            if entry.state == "waiting":
                self._fail(entry, CheckpointError(
                    f"{checkpoint.reference}: released before its weights were downloaded"
                ))
            delete_now = self.delete_after and entry.state in ("ready", "failed")
            # Deleted before the next download starts, so that the budget holds on disk.
            freed = entry.checkpoint.release_weights() if delete_now else 0
            self._start_what_fits()
        return freed

    def download_seconds(self, checkpoint: Checkpoint) -> float:
        """Seconds ``checkpoint``'s weights took to download and check, once the download is
        over (0.0 before, and for a model that needed none)."""
        return self._entry(checkpoint).seconds

    @property
    def failures(self) -> dict[str, str]:
        """Reason per reference for every model whose download failed so far."""
        with self._lock:
            return {
                e.checkpoint.reference: str(e.error)
                for e in self._entries.values() if e.state == "failed" and e.error is not None
            }

    @property
    def held_bytes(self) -> int:
        """Bytes of weights downloading or downloaded and not yet released."""
        with self._lock:
            return sum(e.size for e in self._holding())

    def close(self, timeout: float = 5.0) -> None:
        """Stop: cancel downloads in progress (waiting up to ``timeout`` seconds for them) and
        those not started; with ``delete_after`` delete the weights of models not released yet.

        :meth:`wait` on a model that never finished then raises a
        :class:`~jaxmap.errors.CheckpointError` saying the download was cancelled.
        """
        with self._lock:
            self._closed = True
            self._cancel.set()
            for entry in self._entries.values():
                if entry.state == "waiting":
                    self._fail(entry, CheckpointError(f"{entry.checkpoint.reference}: download cancelled"))
            running = [e.thread for e in self._entries.values() if e.state == "downloading" and e.thread]
            unreleased = [e for e in self._entries.values() if e.state == "ready" and not e.released]
        deadline = time.monotonic() + timeout
        for thread in running:
            thread.join(max(deadline - time.monotonic(), 0.0))
        if self.delete_after:
            for entry in unreleased:
                entry.checkpoint.release_weights()

    def __enter__(self) -> WeightPrefetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
