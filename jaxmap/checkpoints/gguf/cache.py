"""Where conversions live: cache keys, the cache directory, and the cached entry point.

Results are cached under ``<cache>/gguf/<key>/`` (default cache: ``$JAXMAP_CACHE`` or
``~/.cache/jaxmap``). The key hashes the file's size, modification time and its first and last
16 MiB, so a second call costs a stat and two short reads. A directory is built under a temporary
name and renamed into place when complete, so an interrupted conversion never leaves a directory
that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .convert import convert_into

# Part of the cache key: bump it whenever the output of a conversion changes.
CONVERTER_VERSION = 2

_KEY_WINDOW = 16 << 20  # bytes hashed at each end of the file for the cache key
SOURCE_FILE = "jaxmap_source.json"


def default_cache_dir() -> Path:
    """The jaxmap cache root: ``$JAXMAP_CACHE`` if set, else ``~/.cache/jaxmap``."""
    return Path(os.environ.get("JAXMAP_CACHE") or Path.home() / ".cache" / "jaxmap")


def gguf_cache_key(gguf_path: str | Path) -> str:
    """The cache key of a GGUF file: a hash of its size, mtime, ends and the converter version.

    Hashing the whole file would cost about a second per gigabyte on every load. The ends hold
    the metadata (architecture, quantization, vocabulary) and the first and last tensors' data;
    with the size and modification time, that tells apart any two files met in practice.
    """
    path = Path(gguf_path)
    stat = path.stat()
    digest = hashlib.sha256()
    digest.update(f"jaxmap-gguf-v{CONVERTER_VERSION}:{stat.st_size}:{stat.st_mtime_ns}:".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_KEY_WINDOW))
        handle.seek(max(stat.st_size - _KEY_WINDOW, 0))
        digest.update(handle.read(_KEY_WINDOW))
    return digest.hexdigest()[:32]


def convert_gguf(
    gguf_path: str | Path, cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """Convert a GGUF file to a Hugging Face directory, or return the cached conversion.

    Args:
        gguf_path: the ``.gguf`` file.
        cache_dir: the cache root (default :func:`default_cache_dir`); the result lands in
            ``<cache_dir>/gguf/<key>/``.
        progress: show a progress bar while dequantizing.

    Returns:
        The directory with ``config.json``, ``model.safetensors``, the tokenizer files and
        ``jaxmap_source.json`` (source path, key, architecture, conversion time).

    Raises:
        GGUFConversionError: the file is not GGUF, or holds an architecture, tensor, tokenizer or
            metadata value this converter does not translate.
    """
    source = Path(gguf_path).expanduser().resolve()
    if not source.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    key = gguf_cache_key(source)
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()).expanduser()
    target = root / "gguf" / key
    if (target / SOURCE_FILE).is_file():
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        started = time.perf_counter()
        architecture = convert_into(source, building, progress)
        record = {
            "source": str(source),
            "source_size": source.stat().st_size,
            "source_mtime_ns": source.stat().st_mtime_ns,
            "cache_key": key,
            "gguf_architecture": architecture,
            "converter_version": CONVERTER_VERSION,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "conversion_seconds": round(time.perf_counter() - started, 3),
        }
        (building / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        building.chmod(0o755)
        try:
            os.rename(building, target)
        except OSError:
            # Another process finished the same conversion first; its result is as good as ours.
            if not (target / SOURCE_FILE).is_file():
                raise
            shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target
