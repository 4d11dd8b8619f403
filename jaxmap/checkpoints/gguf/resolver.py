"""GGUF files as model references (:data:`GGUF_FILE`), converted once into a Hugging Face
directory in the cache (:func:`~.cache.convert_gguf`).

The checkpoint is that directory's, with source ``"gguf"``: its canonical key is the GGUF file's
resolved absolute path and its revision the conversion's cache key. Packaged models
(:data:`~jaxmap.checkpoints.packaged.PACKAGED`) are GGUF files too and are converted by
:func:`converted_checkpoint` as well.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import CheckpointError
from ..checkpoint import Checkpoint, Resolver
from ..local import local_checkpoint
from .cache import SOURCE_FILE, convert_gguf
from .convert import hf_config
from .reader import read_source

__all__ = ["GGUFFileResolver", "GGUF_FILE", "converted_checkpoint", "gguf_file_config"]


class GGUFFileResolver(Resolver):
    """A path ending in ``.gguf`` that no resolver before it claimed (not a directory)."""

    source = "gguf"

    def claims(self, reference: str, path: Path) -> bool:
        """A path ending in ``.gguf``, whether there is such a file or not (it is named then)."""
        return path.suffix == ".gguf"

    def resolve(self, reference: str, path: Path, cache_dir: str | Path | None, progress: bool) -> Checkpoint:
        """The GGUF file ``path``, converted (first use only)."""
        return converted_checkpoint(reference, path, str(path.resolve()), self, cache_dir, progress)

    def read_config(self, reference: str, path: Path, cache_dir: str | Path | None) -> dict:
        """The HF config the file's metadata translates to, without converting its tensors."""
        return gguf_file_config(reference, path)


GGUF_FILE = GGUFFileResolver()


def gguf_file_config(reference: str, gguf_path: Path) -> dict:
    """The HF config of the GGUF file ``gguf_path``, from its metadata alone."""
    if not gguf_path.is_file():
        raise CheckpointError(f"{reference}: no such GGUF file")
    return hf_config(read_source(gguf_path))


def converted_checkpoint(
    reference: str, gguf_path: Path, canonical: str, resolver: Resolver, cache_dir: str | Path | None, progress: bool
) -> Checkpoint:
    """The checkpoint of ``gguf_path`` converted into the cache, made by ``resolver``.

    ``progress`` shows a bar while the file is converted (first use only).
    """
    if not gguf_path.exists():
        raise CheckpointError(f"{reference}: no such GGUF file")
    directory = convert_gguf(gguf_path, cache_dir=cache_dir, progress=progress)
    conversion = json.loads((directory / SOURCE_FILE).read_text())
    return local_checkpoint(reference, directory, resolver, revision=f"gguf:{conversion['cache_key']}", canonical=canonical)
