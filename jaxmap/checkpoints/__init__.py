"""Model references → checkpoints on disk (local directory, hub id, GGUF file or packaged name).

:func:`resolve` turns a reference into a :class:`Checkpoint`: a directory in Hugging Face layout
(config.json, safetensors weights, tokenizer files) and a canonical key that is the same for
every spelling of one model. GGUF files and packaged models are converted once into such a
directory in the cache (:mod:`.gguf`, :mod:`.packaged`); hub ids resolve to a commit, and only
their config and tokenizer files are downloaded then (:mod:`.hub`: timeouts, bounded retries,
one-line errors). :func:`validate` checks a checkpoint cheaply before anything is scored
(:mod:`.validation`); :meth:`Checkpoint.fetch_weights` downloads a hub model's weights, and
:class:`WeightPrefetcher` does so ahead of the scoring under a disk budget (:mod:`.prefetch`).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

import yaml

from ..errors import CheckpointError, HubError
from ..models import UnsupportedModelError, WeightSource
from .hub import HubSnapshot, delete_downloads, download, downloaded_files, fetch_lock, resolve_snapshot
from .orbax import OrbaxLayout, expand_checkpoint_sequence, find_layout, orbax_revision, run_steps
from .validation import INDEX_FILE, read_json_object, read_shard_index, safetensors_header, validate, validate_weights

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_LIST_SUFFIXES = {".txt", ".yaml", ".yml", ".list"}


@dataclass(frozen=True)
class Checkpoint:
    """A resolved model: where its HF-layout files are, and which exact version they are.

    ``reference`` is the model as the person spelled it (for display); ``canonical`` is equal for
    equal models however they are spelled, so one model is one row of a store: the resolved
    absolute path of a local directory or ``.gguf`` file (``m``, ``./m``, ``m/`` and a symlink to
    ``m`` are one key), ``org/name@<commit sha>`` for a hub id (the id as the hub spells it), and
    the name of a packaged model. ``revision`` is the commit of a hub model, a hash of config and
    weight headers for a local directory, and the conversion's cache key for a GGUF file.

    A hub model's weights are not downloaded by :func:`resolve`; :meth:`fetch_weights` downloads
    them (a job's prefetcher, :class:`~jaxmap.checkpoints.prefetch.WeightPrefetcher`, calls it
    ahead of the scoring) and :meth:`release_weights` deletes them again.
    """

    reference: str
    directory: Path
    revision: str
    source: str  # "local", "gguf" (a .gguf file or a packaged model, converted), "hub" or "orbax"
    canonical: str = ""
    hub: HubSnapshot | None = field(default=None, compare=False, repr=False)
    # An orbax checkpoint's params tree (:mod:`.orbax`); ``directory`` then holds its config.json
    # and tokenizer files.
    orbax: "OrbaxLayout | None" = field(default=None, compare=False, repr=False)

    def config(self) -> dict:
        """The parsed config.json (a JSON object)."""
        return read_json_object(self.directory / "config.json", self.reference)

    def _shard_names(self) -> list[str]:
        index = read_shard_index(self.directory, self.reference)
        return sorted(set(index.values())) if index is not None else ["model.safetensors"]

    def weight_names(self) -> list[str]:
        """The safetensors files to read, relative to :attr:`directory`.

        From the shard index if there is one, else ``model.safetensors``. Each must be on disk,
        or, for a hub model whose weights download later, in the hub's listing of its commit.
        Pickle-only checkpoints are refused by name.
        """
        names = self._shard_names()
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
        if self.source != "hub":
            return False
        try:
            names = self._shard_names()
        except CheckpointError:
            return False  # validation names the broken index
        return not all((self.directory / name).is_file() for name in names)

    def download_bytes(self) -> int:
        """Bytes :meth:`fetch_weights` would download, from the hub's listing (0 if none)."""
        if not self.weights_pending or self.hub is None or self.hub.files is None:
            return 0
        pending = [n for n in self._shard_names() if not (self.directory / n).is_file()]
        return sum(self.hub.files[n].size or 0 for n in pending if n in self.hub.files)

    def fetch_weights(self, cancel: threading.Event | None = None) -> list[Path]:
        """Download a hub model's safetensors (same commit as its config) and check their headers.

        Returns the files it downloaded (none for local and GGUF checkpoints, or when the
        weights are already in the hub cache). Safe to call from several threads: one
        downloads, the others wait for it. ``cancel`` stops a download in progress.

        Raises:
            HubError: the host cannot be reached, refuses the files, or HF_HUB_OFFLINE is set.
            CheckpointError: a downloaded file is damaged (named), or the cache cannot be written.
        """
        if self.source != "hub":
            return []
        if self.hub is None:
            raise HubError(f"{self.reference}: this checkpoint was not resolved from the hub (use resolve())")
        with fetch_lock(self.directory):
            pending = [n for n in self.weight_names() if not (self.directory / n).is_file()]
            if not pending:
                return []
            added = download(self.reference, self.hub, pending, cancel)
            validate_weights(self)
        return added

    def release_weights(self) -> int:
        """Delete the weight files :meth:`fetch_weights` downloaded in this process; returns the
        bytes freed.

        Files that were in the hub cache before, local directories and converted GGUF files are
        never deleted; the config and tokenizer files stay (a re-run validates from them).
        """
        if self.source != "hub":
            return 0
        weights = [n for n in downloaded_files(self.directory) if n.endswith(".safetensors")]
        return delete_downloads(self.directory, weights)

    def load_params(self, architecture: str, config, dtype: str):
        """The decoder's params as host arrays in their final layout and ``dtype``: converted
        from the HF-named safetensors, or restored from an orbax checkpoint."""
        if self.orbax is not None:
            from .orbax import load_orbax_params

            return load_orbax_params(self, architecture, config, dtype)
        from ..models import convert_weights

        return convert_weights(architecture, self.open_weights(), config, dtype)

    def open_weights(self) -> WeightSource:
        """Lazily readable named tensors (read on first use, straight into device arrays).

        A hub model's weights are downloaded here if they are not on disk yet.
        """
        from safetensors import safe_open

        self.fetch_weights()
        handles = [safe_open(str(f), framework="numpy") for f in self.weight_files()]
        owner = {name: handle for handle in handles for name in handle.keys()}
        return WeightSource(
            tensors=lambda name: owner[name].get_tensor(name),
            names=frozenset(owner),
            model=self.reference,
        )


def _content_hash(checkpoint: Checkpoint) -> str:
    """Hash of config.json and every safetensors header (names, shapes, dtypes, offsets)."""
    digest = hashlib.sha256((checkpoint.directory / "config.json").read_bytes())
    for path in checkpoint.weight_files():
        digest.update(json.dumps(safetensors_header(path, checkpoint.reference), sort_keys=True).encode())
        digest.update(str(path.stat().st_size).encode())
    return "sha256:" + digest.hexdigest()[:16]


def _local(reference: str, directory: Path, source: str, revision: str | None = None, canonical: str | None = None) -> Checkpoint:
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{reference}: no config.json in {directory}")
    checkpoint = Checkpoint(reference, directory, "", source, canonical or str(directory.resolve()))
    return replace(checkpoint, revision=revision or _content_hash(checkpoint))


def _hub(reference: str) -> Checkpoint:
    # Config, tokenizer and shard index only: validating a 1,000-model list must not download
    # every model's weights first.
    repo_id, _, revision = reference.partition("@")
    snapshot = resolve_snapshot(reference, repo_id, revision or None)
    if not (snapshot.directory / "config.json").is_file():
        raise CheckpointError(f"{reference}: the hub repository has no config.json")
    return Checkpoint(
        reference, snapshot.directory, snapshot.commit, "hub", f"{snapshot.repo_id}@{snapshot.commit}", snapshot
    )


def resolve(
    reference: str, cache_dir: str | Path | None = None, progress: bool = True
) -> Checkpoint:
    """Resolve one model reference to a :class:`Checkpoint` (see the module docstring).

    ``progress`` shows a bar while a GGUF file is converted (first use only).
    """
    path = Path(reference).expanduser()
    if path.is_dir():
        layout = find_layout(path)
        if layout is not None:
            home, revision = orbax_revision(reference, path, layout)
            return Checkpoint(reference, home, revision, "orbax", str(path.resolve()), orbax=layout)
        steps = run_steps(path)
        if steps:
            raise CheckpointError(
                f"{reference}: a training run of {len(steps)} checkpoints, not one model; pass it to "
                "`jaxmap score` (which expands it to its steps) or name one step directory"
            )
        return _local(reference, path, "local")
    if path.suffix == ".gguf" or _is_packaged(reference):
        from .gguf import convert_gguf
        from .packaged import find_packaged_gguf

        gguf_path = path if path.suffix == ".gguf" else find_packaged_gguf(reference, cache_dir)
        if not gguf_path.exists():
            raise CheckpointError(f"{reference}: no such GGUF file")
        directory = convert_gguf(gguf_path, cache_dir=cache_dir, progress=progress)
        source = json.loads((directory / "jaxmap_source.json").read_text())
        canonical = str(path.resolve()) if path.suffix == ".gguf" else reference
        return _local(reference, directory, "gguf", revision=f"gguf:{source['cache_key']}", canonical=canonical)
    if path.exists():
        raise CheckpointError(f"{reference}: not a model directory or .gguf file")
    if _HUB_ID.match(reference):
        return _hub(reference)
    raise CheckpointError(f"{reference}: no such model directory, GGUF file or hub id")


def _is_packaged(reference: str) -> bool:
    from .packaged import PACKAGED_MODELS

    return reference in PACKAGED_MODELS


def _list_entry(entry, where: str) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        for key in ("model", "name", "id", "repo_id", "path"):
            if isinstance(entry.get(key), str):
                revision = entry.get("revision")
                return f"{entry[key]}@{revision}" if revision else entry[key]
    raise CheckpointError(f"{where}: cannot read a model reference from {entry!r}")


def read_model_list(path: Path) -> list[str]:
    """Model references from a list file: one per line (``#`` comments) or a YAML list."""
    text = path.read_text()
    if path.suffix in {".yaml", ".yml"}:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CheckpointError(f"{path}: not valid YAML ({error})") from None
        if isinstance(data, dict) and "models" in data:
            data = data["models"]
        if not isinstance(data, list):
            raise CheckpointError(f"{path}: expected a YAML list of models")
        return [_list_entry(entry, f"{path} entry {i + 1}") for i, entry in enumerate(data)]
    references = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            references.append(line)
    return references


def expand_references(references: Iterable[str]) -> list[str]:
    """Replace list files by the references they hold, a training run's directory by its
    checkpoints in step order, and a glob pattern that names no file (``'run/step_*'``, quoted
    so that jaxmap expands it) by its matches in step order; keep order, drop repeats."""
    out: list[str] = []
    for reference in references:
        path = Path(reference).expanduser()
        if path.is_file() and path.suffix in _LIST_SUFFIXES:
            items = read_model_list(path)
        else:
            items = expand_checkpoint_sequence(reference) or [reference]
        for item in items:
            if item not in out:
                out.append(item)
    return out

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "HubError",
    "UnsupportedModelError",
    "WeightPrefetcher",
    "expand_references",
    "read_model_list",
    "resolve",
    "validate",
    "validate_weights",
]


from .prefetch import WeightPrefetcher  # noqa: E402 - it needs Checkpoint defined
