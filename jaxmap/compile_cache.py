"""XLA's persistent compilation cache, shared between processes and runs (``--compile-cache``).

A scorer compiled once is written to the cache directory; a later process (another shard, the
next run, a second host on a shared file system) that lowers the same program loads it instead
of compiling again. JAX keys each entry by the lowered program itself, so everything that
changes the program changes the key: parameter shapes and dtypes, the batch shape, the mesh and
its shardings, and the attention and log-prob kernels chosen; and by the compile options, the
device kind and the jax and jaxlib versions. Models of one shape share entries whatever their
weights, since weights are arguments of the program, not constants in it.
"""

from __future__ import annotations

from pathlib import Path

import jax

from .checkpoints.gguf.cache import default_cache_dir
from .errors import OutputError
from .outputs import describe_os_error

_EVENTS = {"/jax/compilation_cache/cache_misses": "compiled", "/jax/compilation_cache/cache_hits": "loaded"}
_counts = {"compiled": 0, "loaded": 0}
_state: dict = {"directory": None, "listening": False}


def default_directory() -> Path:
    """``$JAXMAP_CACHE/xla``, else ``~/.cache/jaxmap/xla``."""
    return default_cache_dir() / "xla"


def _count(event: str, **_kwargs) -> None:
    if event in _EVENTS:
        _counts[_EVENTS[event]] += 1


def enable(directory: str | Path | None = None) -> Path:
    """Use the persistent compilation cache in ``directory`` (default :func:`default_directory`)
    for this process, and count what it compiles and loads (:func:`counts`).

    Call it before the first JAX computation of the process: JAX decides once, at its first
    compilation, whether a cache is in use.
    """
    path = Path(directory).expanduser() if directory is not None else default_directory()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"--compile-cache: {describe_os_error(path, error)}") from None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every program, however quick to compile: a job's many small ones add up over 1,000 models.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if not _state["listening"]:
        jax.monitoring.register_event_listener(_count)
        _state["listening"] = True
    _state["directory"] = path
    return path


def directory() -> Path | None:
    """The cache directory this process uses, or None when :func:`enable` was not called."""
    return _state["directory"]


def counts() -> dict[str, int]:
    """Programs this process compiled, and loaded from the cache, since :func:`enable`."""
    return dict(_counts)
