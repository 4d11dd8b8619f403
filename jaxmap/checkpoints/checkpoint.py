"""A resolved model (:class:`Checkpoint`) and the interface each checkpoint source implements
(:class:`Resolver`).

Each source of models (a local directory, a hub id, a GGUF file, a packaged model, an orbax
checkpoint) is one :class:`Resolver` in its own module. It says which references it claims and
turns one into a :class:`Checkpoint`; afterwards it supplies what differs between sources:
whether weights are still to be downloaded, downloading and deleting them, checking them, and
loading the params. :func:`jaxmap.checkpoints.resolve` asks the resolvers in their order of
precedence (:data:`jaxmap.checkpoints.RESOLVERS`). A checkpoint keeps the resolver that made it,
so nothing downstream branches on where a model came from, and a new source is one new module
and one entry in that table.

The sources import this module to build their checkpoints, so it imports none of them: the
per-source data a checkpoint carries (``hub``, ``orbax``) are annotated by name only.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, HubError
from ..models import WeightSource
from .validation import INDEX_FILE, read_json_object, read_shard_index, validate_weights

__all__ = ["Checkpoint", "Resolver"]


class Resolver(ABC):
    """One source of models: which references are its own, how one becomes a :class:`Checkpoint`,
    and what its checkpoints do differently from a directory whose weights are all on disk.

    :meth:`claims` and :meth:`resolve` are each source's own; the other methods are called with
    a checkpoint this resolver made, and their defaults suit a source that has nothing to
    download and holds Hugging Face-named safetensors.
    """

    source: str
    """What :attr:`Checkpoint.source` says of the checkpoints this resolver makes (``"local"``,
    ``"gguf"``, ``"hub"`` or ``"orbax"``); the store records it with each model's rows."""

    @abstractmethod
    def claims(self, reference: str, path: Path) -> bool:
        """Whether ``reference`` is this source's, given that no resolver before this one in
        :data:`~jaxmap.checkpoints.RESOLVERS` claimed it. ``path`` is the reference read as a
        path, ``~`` expanded."""

    @abstractmethod
    def resolve(self, reference: str, path: Path, cache_dir: str | Path | None, progress: bool) -> Checkpoint:
        """The checkpoint ``reference`` names (one this resolver claimed), or a
        :class:`~jaxmap.errors.JaxmapError` saying in one line why there is none. ``cache_dir``
        and ``progress`` are :func:`~jaxmap.checkpoints.resolve`'s."""

    def read_config(self, reference: str, path: Path, cache_dir: str | Path | None) -> dict:
        """The HF config of a reference this resolver claimed, read without converting or
        downloading weights: cost planning reads every model's config before anything else.
        By default the resolved checkpoint's config.json."""
        return self.resolve(reference, path, cache_dir, progress=False).config()

    def weights_pending(self, checkpoint: Checkpoint) -> bool:
        """Whether some of the checkpoint's weights are still to be downloaded."""
        return False

    def download_bytes(self, checkpoint: Checkpoint) -> int:
        """Bytes :meth:`fetch_weights` would download (0 if it is not known)."""
        return 0

    def fetch_weights(self, checkpoint: Checkpoint, cancel: threading.Event | None) -> list[Path]:
        """Download the checkpoint's missing weights; returns the files it downloaded."""
        return []

    def release_weights(self, checkpoint: Checkpoint) -> int:
        """Delete the weight files :meth:`fetch_weights` downloaded; returns the bytes freed."""
        return 0

    def check_weights(self, checkpoint: Checkpoint) -> None:
        """The weight part of :func:`~jaxmap.checkpoints.validate`: the shard index and every
        safetensors header on disk (weights still to be downloaded are checked by name here,
        and their headers when they arrive)."""
        checkpoint.weight_names()
        if not checkpoint.weights_pending:
            validate_weights(checkpoint)

    def load_params(self, checkpoint: Checkpoint, architecture: str, config, dtype: str):
        """The decoder's params as host arrays, converted from the HF-named safetensors."""
        from ..models import convert_weights

        return convert_weights(architecture, checkpoint.open_weights(), config, dtype)

    def __repr__(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Checkpoint:
    """A resolved model: where its HF-layout files are, and which exact version they are.

    ``reference`` is the model as the person spelled it (for display); ``canonical`` is equal for
    equal models however they are spelled, so one model is one row of a store: the resolved
    absolute path of a local directory or ``.gguf`` file (``m``, ``./m``, ``m/`` and a symlink to
    ``m`` are one key), ``org/name@<commit sha>`` for a hub id (the id as the hub spells it), and
    the name of a packaged model. ``revision`` is the commit of a hub model, a hash of config and
    weight headers for a local directory, and the conversion's cache key for a GGUF file.
    ``resolver`` is the source that resolved it (:class:`Resolver`), which the methods below
    defer to where sources differ.

    A hub model's weights are not downloaded by :func:`~jaxmap.checkpoints.resolve`;
    :meth:`fetch_weights` downloads them (a job's prefetcher,
    :class:`~jaxmap.checkpoints.prefetch.WeightPrefetcher`, calls it ahead of the scoring) and
    :meth:`release_weights` deletes them again.
    """

    reference: str
    directory: Path
    revision: str
    resolver: Resolver
    canonical: str = ""
    # A hub model's commit and file listing (:class:`~jaxmap.checkpoints.hub.HubSnapshot`).
    hub: "HubSnapshot | None" = field(default=None, compare=False, repr=False)
    # An orbax checkpoint's params tree (:class:`~jaxmap.checkpoints.orbax.OrbaxLayout`);
    # ``directory`` then holds its config.json and tokenizer files.
    orbax: "OrbaxLayout | None" = field(default=None, compare=False, repr=False)

    @property
    def source(self) -> str:
        """``"local"``, ``"gguf"`` (a .gguf file or a packaged model, converted), ``"hub"`` or
        ``"orbax"``: :attr:`Resolver.source` of the resolver that made it."""
        return self.resolver.source

    def config(self) -> dict:
        """The parsed config.json (a JSON object)."""
        return read_json_object(self.directory / "config.json", self.reference)

    def shard_names(self) -> list[str]:
        """The safetensors files the shard index names, else ``model.safetensors``, whether they
        are on disk or not (:meth:`weight_names` checks that they are there or listed)."""
        index = read_shard_index(self.directory, self.reference)
        return sorted(set(index.values())) if index is not None else ["model.safetensors"]

    def weight_names(self) -> list[str]:
        """The safetensors files to read, relative to :attr:`directory`.

        From the shard index if there is one, else ``model.safetensors``. Each must be on disk,
        or, for a hub model whose weights download later, in the hub's listing of its commit.
        Pickle-only checkpoints are refused by name.
        """
        names = self.shard_names()
        listed = set(self.hub.files) if self.hub is not None and self.hub.files is not None else set()
        missing = [n for n in names if not (self.directory / n).is_file() and n not in listed]
        if not missing:
            return names
        if names == ["model.safetensors"]:
            present = listed | {p.name for p in self.directory.iterdir()}
            pickles = sorted(n for n in present if n.endswith((".bin", ".pt", ".pth")))
            if pickles:
                raise CheckpointError(
                    f"{self.reference}: pickle-only checkpoint ({', '.join(pickles)}); jaxmap reads "
                    "safetensors only, since unpickling runs arbitrary code. Convert it with "
                    "transformers' save_pretrained(..., safe_serialization=True)."
                )
        if self.hub is not None and self.hub.files is None:
            raise HubError(
                f"{self.reference}: {', '.join(missing)} not in the local hub cache ({self.directory}), "
                "and HF_HUB_OFFLINE forbids downloading"
            )
        where = "the hub repository" if listed else str(self.directory)
        if names != ["model.safetensors"]:
            raise CheckpointError(f"{self.reference}: shard(s) missing from {where}: {', '.join(missing)}")
        raise CheckpointError(f"{self.reference}: no model.safetensors or {INDEX_FILE} in {where}")

    def weight_files(self) -> list[Path]:
        """The safetensors files on disk (a hub model's after :meth:`fetch_weights`)."""
        files = [self.directory / name for name in self.weight_names()]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(
                f"{self.reference}: weights not downloaded yet ({', '.join(absent)}); call fetch_weights()"
            )
        return files

    @property
    def weights_pending(self) -> bool:
        """A hub model whose weights are not (all) on disk yet."""
        return self.resolver.weights_pending(self)

    def download_bytes(self) -> int:
        """Bytes :meth:`fetch_weights` would download, from the hub's listing (0 if none)."""
        return self.resolver.download_bytes(self)

    def fetch_weights(self, cancel: threading.Event | None = None) -> list[Path]:
        """Download a hub model's safetensors (same commit as its config) and check their headers.

        Returns the files it downloaded (none for local and GGUF checkpoints, or when the
        weights are already in the hub cache). Safe to call from several threads: one
        downloads, the others wait for it. ``cancel`` stops a download in progress.

        Raises:
            HubError: the host cannot be reached, refuses the files, or HF_HUB_OFFLINE is set.
            CheckpointError: a downloaded file is damaged (named), or the cache cannot be written.
        """
        return self.resolver.fetch_weights(self, cancel)

    def release_weights(self) -> int:
        """Delete the weight files :meth:`fetch_weights` downloaded in this process; returns the
        bytes freed.

        Files that were in the hub cache before, local directories and converted GGUF files are
        never deleted; the config and tokenizer files stay (a re-run validates from them).
        """
        return self.resolver.release_weights(self)

    def load_params(self, architecture: str, config, dtype: str):
        """The decoder's params as host arrays in their final layout and ``dtype``: converted
        from the HF-named safetensors, or restored from an orbax checkpoint.

        Records its seconds, and those spent reading tensor data, for :meth:`load_timing`."""
        timing = {"read": 0.0}
        _reading.timing = timing
        started = time.perf_counter()
        try:
            return self.resolver.load_params(self, architecture, config, dtype)
        finally:
            _reading.timing = None
            total = time.perf_counter() - started
            # read: tensor bytes from the files; layout: converting, transposing, stacking, casting.
            timing = {"read": min(timing["read"], total), "layout": max(total - timing["read"], 0.0)}
            with _timings_lock:
                _timings.pop(id(self), None)
                _timings[id(self)] = (self, timing)
                while len(_timings) > _KEPT_TIMINGS:  # loads nobody asked about
                    _timings.pop(next(iter(_timings)))

    def load_timing(self) -> dict[str, float]:
        """Seconds of this checkpoint's last :meth:`load_params` (any thread): ``read`` (tensor
        data from the files) and ``layout`` (the rest: converting to the decoder's layout and
        dtype); empty if it was not loaded in this process. Taken once: a second call is empty."""
        with _timings_lock:
            entry = _timings.pop(id(self), None)
        return dict(entry[1]) if entry is not None and entry[0] is self else {}

    def open_weights(self) -> WeightSource:
        """Lazily readable named tensors (read on first use, straight into device arrays).

        A hub model's weights are downloaded here if they are not on disk yet. The seconds
        spent reading go to :meth:`load_timing`'s ``read``.
        """
        from safetensors import safe_open

        self.fetch_weights()
        handles = [safe_open(str(f), framework="numpy") for f in self.weight_files()]
        owner = {name: handle for handle in handles for name in handle.keys()}
        return WeightSource(
            tensors=lambda name: _timed_read(owner[name], name),
            names=frozenset(owner),
            model=self.reference,
        )


# Seconds of the tensor reads of the load_params in progress on this thread.
_reading = threading.local()
# id(checkpoint) -> (checkpoint, timing) of its last load_params, until load_timing takes it.
_timings: dict[int, tuple[Checkpoint, dict[str, float]]] = {}
_timings_lock = threading.Lock()
_KEPT_TIMINGS = 64


def _timed_read(handle, name: str):
    """``handle.get_tensor(name)``, its seconds added to the load in progress on this thread."""
    started = time.perf_counter()
    tensor = handle.get_tensor(name)
    timing = getattr(_reading, "timing", None)
    if timing is not None:
        timing["read"] += time.perf_counter() - started
    return tensor
