"""Local directories in Hugging Face layout as model references (:data:`LOCAL`).

A directory that holds no orbax checkpoint (:data:`~jaxmap.checkpoints.orbax.ORBAX` comes first)
is a model directory: config.json, safetensors weights, tokenizer files. Its canonical key is its
resolved absolute path and its revision a hash of config.json and the weight headers, so an
edited model is a new version. A training run's directory (one holding step directories) names
many models, not one, and is refused here; ``jaxmap score`` expands it before resolving.
:func:`local_checkpoint` also makes the checkpoint of a converted GGUF file's directory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from ..errors import CheckpointError
from .checkpoint import Checkpoint, Resolver
from .orbax import run_steps
from .validation import read_json_object, safetensors_header

__all__ = ["LOCAL", "LocalResolver", "local_checkpoint"]


class LocalResolver(Resolver):
    """Every directory that no resolver before it claimed (see the module docstring)."""

    source = "local"

    def claims(self, reference: str, path: Path) -> bool:
        """Any directory."""
        return path.is_dir()

    def resolve(self, reference: str, path: Path, cache_dir: str | Path | None, progress: bool) -> Checkpoint:
        """The model in directory ``path``, refusing a training run's directory."""
        steps = run_steps(path)
        if steps:
            raise CheckpointError(
                f"{reference}: a training run of {len(steps)} checkpoints, not one model; pass it to "
                "`jaxmap score` (which expands it to its steps) or name one step directory"
            )
        return local_checkpoint(reference, path, self)

    def read_config(self, reference: str, path: Path, cache_dir: str | Path | None) -> dict:
        """The directory's config.json, without hashing its weights."""
        return read_json_object(path / "config.json", reference)


LOCAL = LocalResolver()


def local_checkpoint(
    reference: str, directory: Path, resolver: Resolver, revision: str | None = None, canonical: str | None = None
) -> Checkpoint:
    """The checkpoint of a Hugging Face directory on disk, made by ``resolver``.

    ``canonical`` defaults to the directory's resolved path and ``revision`` to a hash of its
    config.json and safetensors headers (names, shapes, dtypes, offsets and file sizes).
    """
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{reference}: no config.json in {directory}")
    checkpoint = Checkpoint(reference, directory, "", resolver, canonical or str(directory.resolve()))
    # The hash reads the weight files through the checkpoint, so it exists before its revision.
    return replace(checkpoint, revision=revision or _content_hash(checkpoint))


def _content_hash(checkpoint: Checkpoint) -> str:
    """Hash of config.json and every safetensors header (names, shapes, dtypes, offsets)."""
    digest = hashlib.sha256((checkpoint.directory / "config.json").read_bytes())
    for path in checkpoint.weight_files():
        digest.update(json.dumps(safetensors_header(path, checkpoint.reference), sort_keys=True).encode())
        digest.update(str(path.stat().st_size).encode())
    return "sha256:" + digest.hexdigest()[:16]
