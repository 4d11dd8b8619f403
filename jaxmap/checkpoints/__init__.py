"""Model references → checkpoints on disk (local directory, hub id, GGUF file, packaged name or
orbax checkpoint).

:func:`resolve` turns a reference into a :class:`Checkpoint`: a directory in Hugging Face layout
(config.json, safetensors weights, tokenizer files) and a canonical key that is the same for
every spelling of one model. Each source is a :class:`Resolver` in its own module, and
:data:`RESOLVERS` holds them in their order of precedence: orbax step directories
(:mod:`.orbax`), other directories (:mod:`.local`), GGUF files and packaged models, converted
once into such a directory in the cache (:mod:`.gguf`, :mod:`.packaged`), and hub ids, which
resolve to a commit whose config and tokenizer files only are downloaded then (:mod:`.hub`:
timeouts, bounded retries, one-line errors). :func:`validate` checks a checkpoint cheaply before
anything is scored (:mod:`.validation`); :meth:`Checkpoint.fetch_weights` downloads a hub model's
weights, and :class:`WeightPrefetcher` does so ahead of the scoring under a disk budget
(:mod:`.prefetch`). :func:`expand_references` reads model lists and expands training runs
(:mod:`.model_lists`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, HubError, UnsupportedModelError
from .checkpoint import Checkpoint, Resolver
from .gguf.resolver import GGUF_FILE
from .hub import HUB
from .local import LOCAL
from .model_lists import expand_references, read_model_list
from .orbax import ORBAX
from .packaged import PACKAGED
from .prefetch import WeightPrefetcher
from .validation import validate, validate_weights

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "HubError",
    "RESOLVERS",
    "Resolver",
    "UnsupportedModelError",
    "WeightPrefetcher",
    "expand_references",
    "read_config",
    "read_model_list",
    "resolve",
    "validate",
    "validate_weights",
]

# The first resolver that claims a reference resolves it, so the order is the precedence: a
# directory holding an orbax checkpoint is that checkpoint, any other directory a local model
# (or a refused training run); a path ending in .gguf is a GGUF file before a packaged name is
# looked up; a hub id last, since a path on disk of the same spelling shadows it.
RESOLVERS: tuple[Resolver, ...] = (ORBAX, LOCAL, GGUF_FILE, PACKAGED, HUB)


def resolve(
    reference: str, cache_dir: str | Path | None = None, progress: bool = True
) -> Checkpoint:
    """Resolve one model reference to a :class:`Checkpoint` (see the module docstring).

    ``progress`` shows a bar while a GGUF file is converted (first use only).
    """
    path = Path(reference).expanduser()
    return _claimant(reference, path).resolve(reference, path, cache_dir, progress)


def read_config(reference: str, cache_dir: str | Path | None = None) -> dict:
    """The HF config of the model ``reference`` names, read without converting a GGUF file or
    downloading weights (a hub model's config and tokenizer files are downloaded, as by
    :func:`resolve`)."""
    path = Path(reference).expanduser()
    return _claimant(reference, path).read_config(reference, path, cache_dir)


def _claimant(reference: str, path: Path) -> Resolver:
    for resolver in RESOLVERS:
        if resolver.claims(reference, path):
            return resolver
    if path.exists():
        raise CheckpointError(f"{reference}: not a model directory or .gguf file")
    raise CheckpointError(f"{reference}: no such model directory, GGUF file or hub id")
