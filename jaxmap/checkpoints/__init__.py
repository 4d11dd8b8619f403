"""Model references → checkpoints on disk (local directory, hub id, GGUF file or packaged name).

A reference is resolved to a directory in Hugging Face layout (config.json, safetensors weights,
tokenizer files). GGUF files are converted once into such a directory in the cache
(:mod:`.gguf`); hub ids are fetched with ``huggingface_hub`` (safetensors only).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from ..models import UnsupportedModelError, WeightSource
from ..errors import CheckpointError



_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_LIST_SUFFIXES = {".txt", ".yaml", ".yml", ".list"}


@dataclass(frozen=True)
class Checkpoint:
    """A resolved model: where its HF-layout files are, and which exact version they are.

    ``reference`` is the model as the person spelled it; ``canonical`` is equal for equal
    models however they are spelled (a resolved local path, a hub id with its commit, a
    packaged model's name), so one model is one row of a store.
    """

    reference: str
    directory: Path
    revision: str
    source: str
    canonical: str = ""

    def config(self) -> dict:
        """The parsed config.json (a JSON object)."""
        path = self.directory / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{self.reference}: config.json is not valid JSON ({error})") from None
        except OSError as error:
            raise CheckpointError(f"{self.reference}: cannot read config.json ({error.strerror or error})") from None
        if not isinstance(config, dict):
            raise CheckpointError(
                f"{self.reference}: config.json holds a JSON {type(config).__name__}, not an object"
            )
        return config

    def weight_files(self) -> list[Path]:
        """The safetensors files, from the shard index if there is one."""
        return _weight_files(self.directory, self.reference)

    @property
    def weights_pending(self) -> bool:
        """A hub model whose weights are not downloaded yet (they come with :meth:`fetch_weights`)."""
        if self.source != "hub":
            return False
        shards = _index_shards(self.directory) or ["model.safetensors"]
        return not all((self.directory / shard).exists() for shard in shards)

    def download_bytes(self) -> int:
        """Bytes :meth:`fetch_weights` would download (0 when nothing is pending)."""
        if not self.weights_pending:
            return 0
        index = self.directory / "model.safetensors.index.json"
        if index.exists():
            total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
            if isinstance(total, int):
                return total
        from .hub import weight_bytes

        return weight_bytes(self.reference, self.canonical.rpartition("@")[0], self.revision)

    def fetch_weights(self) -> None:
        """Download a hub model's safetensors (same commit as its config); others have theirs."""
        if self.weights_pending:
            from .hub import WEIGHT_FILES, download

            repo_id = self.canonical.rpartition("@")[0]
            download(self.reference, repo_id, self.revision, WEIGHT_FILES)
        self.weight_files()  # a hub repo without safetensors is refused here, by name

    def release_weights(self) -> int:
        """Delete a hub model's downloaded weights from the hub cache; returns the bytes freed.

        Only hub downloads are deleted, never local directories or converted GGUF files.
        """
        if self.source != "hub":
            return 0
        freed = 0
        for link in self.directory.glob("*.safetensors"):
            target = link.resolve()
            if target.exists() and target != link:
                freed += target.stat().st_size
                target.unlink()
            link.unlink(missing_ok=True)
        return freed

    def open_weights(self) -> WeightSource:
        """Lazily readable named tensors (read on first use, straight into device arrays).

        A hub model's weights are downloaded here, on first use, so that a job downloads the
        next model while it scores the current one.
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


def _index_shards(directory: Path) -> list[str]:
    """The shard files a shard index names (empty without a readable index)."""
    try:
        return sorted(set(json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _weight_files(directory: Path, reference: str) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(
                f"{reference}: model.safetensors.index.json is not a shard index (no weight_map)"
            ) from None
        missing = [s for s in shards if not (directory / s).exists()]
        if missing:
            raise CheckpointError(f"{reference}: shard(s) missing: {', '.join(missing)}")
        return [directory / s for s in shards]
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(
        p.name for p in directory.glob("*.pt")
    )
    if pickles:
        raise CheckpointError(
            f"{reference}: pickle-only checkpoint ({', '.join(pickles)}); jaxmap reads "
            "safetensors only, since unpickling runs arbitrary code. Convert it with "
            "transformers' save_pretrained(..., safe_serialization=True)."
        )
    raise CheckpointError(f"{reference}: no model.safetensors or model.safetensors.index.json")


def _content_hash(directory: Path, reference: str) -> str:
    """Hash of config.json and every safetensors header (names, shapes, dtypes, offsets)."""
    from .validate import safetensors_header

    digest = hashlib.sha256((directory / "config.json").read_bytes())
    for path in _weight_files(directory, reference):
        digest.update(json.dumps(safetensors_header(path, reference), sort_keys=True).encode())
        digest.update(str(path.stat().st_size).encode())
    return "sha256:" + digest.hexdigest()[:16]


def _local(
    reference: str, directory: Path, source: str, revision: str | None = None, canonical: str | None = None
) -> Checkpoint:
    if not (directory / "config.json").exists():
        raise CheckpointError(f"{reference}: no config.json in {directory}")
    _weight_files(directory, reference)
    return Checkpoint(
        reference, directory, revision or _content_hash(directory, reference), source,
        canonical or str(directory.resolve()),
    )


def _hub(reference: str) -> Checkpoint:
    from .hub import METADATA_FILES, download

    # Config, tokenizer and shard index only: validating a 1,000-model list must not download
    # every model's weights first.
    repo_id, _, revision = reference.partition("@")
    directory = download(reference, repo_id, revision or None, METADATA_FILES)
    if not (directory / "config.json").exists():
        raise CheckpointError(f"{reference}: the hub repository has no config.json")
    return Checkpoint(reference, directory, directory.name, "hub", f"{repo_id}@{directory.name}")


def resolve(
    reference: str, cache_dir: str | Path | None = None, progress: bool = True
) -> Checkpoint:
    """Resolve one model reference to a :class:`Checkpoint` (see the module docstring).

    ``progress`` shows a bar while a GGUF file is converted (first use only).
    """
    path = Path(reference).expanduser()
    if path.is_dir():
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
    """Replace list files by the references they hold; keep order, drop repeats."""
    out: list[str] = []
    for reference in references:
        path = Path(reference)
        items = read_model_list(path) if path.is_file() and path.suffix in _LIST_SUFFIXES else [reference]
        for item in items:
            if item not in out:
                out.append(item)
    return out


from .validate import validate  # noqa: E402 - it needs Checkpoint's module loaded

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "UnsupportedModelError",
    "expand_references",
    "read_model_list",
    "resolve",
    "validate",
]
