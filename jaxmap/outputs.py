"""Writing output files safely: never over an input, never half-written.

Every file a command writes goes through :func:`atomic_output`: the content is written to a
temporary file beside the target, fsynced and renamed over the target only when the whole
command step succeeded. A failure (an exception, a full disk, an interrupt) leaves an existing
target exactly as it was and removes the temporary file.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputError

_DISK_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "its directory does not exist",
    errno.ENOTDIR: "a part of its directory path is a file",
    errno.EISDIR: "it is a directory",
}


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also catches hard links and symlinks
    except OSError:
        pass
    return a.expanduser().resolve() == b.expanduser().resolve()


def refuse_inputs(output: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Raise :class:`OutputError` when ``output`` is one of ``inputs`` (None entries skipped)."""
    output = Path(output)
    for given in inputs:
        if given is not None and _same_file(output, Path(given)):
            raise OutputError(
                f"{output}: is also an input of this command ({given}); writing it would destroy "
                "that input. Choose another output path."
            )


def describe_os_error(path: str | Path, error: OSError) -> str:
    """One line for an operating-system error on ``path``."""
    reason = _DISK_ERRORS.get(error.errno, error.strerror or str(error))
    return f"{path}: cannot write ({reason})"


@contextmanager
def atomic_output(path: str | Path, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary path to write instead of ``path``; rename it over ``path`` on success.

    Refuses an output that is one of ``inputs``. The temporary file keeps the target's suffix,
    so writers that pick a format by extension (matplotlib) behave the same.
    """
    path = Path(path)
    refuse_inputs(path, inputs)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file path")
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(describe_os_error(path, error)) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
