"""Writing output files safely: never over an input, never half-written.

Every file jaxmap writes for a person goes through :func:`atomic_output` (one file) or
:func:`atomic_outputs` (the files of one command): each is written to a temporary file beside
its target, fsynced, and renamed over the target only when the whole step succeeded. A failure
(an exception, a full disk, an interrupt) leaves every existing target exactly as it was and
removes the temporary files. An output that is one of the command's inputs, or a path given
twice as an output, is refused before anything is written.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import JaxmapError, OutputError

_DISK_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "its directory does not exist",
    errno.ENOTDIR: "a part of its directory path is a file",
    errno.EISDIR: "it is a directory",
    errno.ENAMETOOLONG: "the file name is too long",
}

PathLike = str | os.PathLike

_OPEN_TEMPORARIES: set[Path] = set()


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)  # also catches hard links and symbolic links
    except OSError:
        pass
    return a.expanduser().resolve() == b.expanduser().resolve()


def refuse_inputs(output: PathLike, inputs: Iterable[PathLike | None]) -> None:
    """Raise :class:`OutputError` when ``output`` is one of ``inputs`` (None entries skipped)."""
    output = Path(output)
    for given in inputs:
        if given is not None and _same_file(output, Path(given)):
            raise OutputError(
                f"{output}: is also an input of this command ({given}); writing it would destroy "
                "that input. Choose another output path."
            )


def describe_os_error(path: PathLike, error: OSError) -> str:
    """One line for an operating-system error while writing ``path``."""
    reason = _DISK_ERRORS.get(error.errno, error.strerror or str(error))
    return f"{path}: cannot write ({reason})"


def _file_mode(target: Path) -> int:
    """The target's mode when it exists (rewriting keeps it), else what ``open`` would give."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open a directory; the rename itself is done
    try:
        os.fsync(handle)
    except OSError:
        pass  # not every file system can sync a directory
    finally:
        os.close(handle)


def make_directory(path: PathLike) -> Path:
    """Create the output directory ``path`` (and its parents) unless it exists.

    Raises :class:`OutputError` naming the path when it is a file or cannot be created.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file, not a directory; give a directory for the outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = _DISK_ERRORS.get(error.errno, error.strerror or str(error))
        if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):
            reason = "a part of its path is a file or cannot be created"
        raise OutputError(f"{path}: cannot create the directory ({reason})") from None
    return path


def check_outputs(
    paths: Sequence[PathLike | None], inputs: Iterable[PathLike | None] = ()
) -> list[Path]:
    """Refuse, before any work, outputs that could not be written or would destroy an input.

    Raises :class:`OutputError` naming the path for an output that is one of ``inputs``, given
    twice, a directory, write-protected, or in a directory that does not exist. Returns the
    given (not None) outputs as paths.
    """
    given = [Path(path).expanduser() for path in paths if path is not None]
    inputs = [given_input for given_input in inputs if given_input is not None]
    for position, target in enumerate(given):
        refuse_inputs(target, inputs)
        for earlier in given[:position]:
            if _same_file(target, earlier):
                raise OutputError(f"{target}: given twice as an output of this command ({earlier})")
        if target.is_dir():
            raise OutputError(f"{target}: is a directory; give a file path")
        if _is_stream(target):
            continue  # written in place, like any program writing to /dev/stdout
        directory = _destination(target).parent
        reason = None
        if not directory.is_dir():
            reason = _DISK_ERRORS[errno.ENOTDIR if directory.exists() else errno.ENOENT]
        elif not os.access(directory, os.W_OK | os.X_OK):
            reason = _refusal(directory, "no permission to write in its directory")
        elif target.exists() and not os.access(target, os.W_OK):
            # A rename would replace a write-protected file; honour the protection instead.
            reason = _refusal(directory, "the file is write-protected")
        if reason:
            raise OutputError(f"{target}: cannot write ({reason})")
    return given


def _is_stream(target: Path) -> bool:
    """Whether ``target`` is an existing device, pipe or socket (``/dev/stdout``, a FIFO)."""
    return target.exists() and not target.is_file() and not target.is_dir()


def _destination(target: Path) -> Path:
    """The file a write to ``target`` changes: a symbolic link's target, so the link stays."""
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def _refusal(directory: Path, otherwise: str) -> str:
    """Why writing in ``directory`` is refused: a read-only file system, else ``otherwise``."""
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return _DISK_ERRORS[errno.EROFS] if read_only else otherwise


@contextmanager
def atomic_outputs(
    paths: Sequence[PathLike | None], inputs: Iterable[PathLike | None] = ()
) -> Iterator[list[Path | None]]:
    """Yield one temporary path per entry of ``paths`` (None stays None); on success rename each
    over its target, all after every one of them was written and fsynced.

    The temporaries sit beside their targets and keep their suffixes, so writers that pick a
    format by extension behave the same. A symbolic link is followed (the file it points to is
    replaced, the link kept); a device or pipe (``/dev/stdout``) is written in place. Raises
    :class:`OutputError` for an output that is one of ``inputs`` or named twice, a directory, or
    a file the system refuses to write (a full disk, a read-only file system, no permission),
    naming the path.
    """
    targets = [None if path is None else Path(path).expanduser() for path in paths]
    # A target that is an enclosing block's temporary (a plot function called by a command that
    # writes several files) is written directly; the enclosing block renames it.
    nested = [target in _OPEN_TEMPORARIES for target in targets]
    check_outputs([target for target, inner in zip(targets, nested) if not inner], inputs)
    owned: dict[Path, Path] = {}  # temporary -> target, for the files this block renames
    streams = {
        target for target, inner in zip(targets, nested) if target is not None and not inner and _is_stream(target)
    }
    temporaries: list[Path | None] = []
    try:
        for target, inner in zip(targets, nested):
            if target is None or inner or target in streams:
                temporaries.append(target)
                continue
            destination = _destination(target)
            try:
                handle, name = tempfile.mkstemp(
                    prefix=f".{destination.stem}.tmp-", suffix=destination.suffix, dir=destination.parent
                )
            except OSError as error:
                raise OutputError(describe_os_error(target, error)) from None
            os.close(handle)
            owned[Path(name)] = target
            temporaries.append(Path(name))
        _OPEN_TEMPORARIES.update(owned)
        yield temporaries
        for temporary, target in owned.items():
            os.chmod(temporary, _file_mode(target))
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        for temporary, target in owned.items():
            os.replace(temporary, _destination(target))
        for directory in {temporary.parent for temporary in owned}:
            _fsync_directory(directory)
    except BaseException as error:
        for temporary in owned:
            temporary.unlink(missing_ok=True)
        if isinstance(error, JaxmapError) or not isinstance(error, OSError):
            raise
        ours = {**owned, **{stream: stream for stream in streams}}
        if error.filename is not None:
            named = ours.get(Path(os.fsdecode(error.filename)))
        else:
            named = ", ".join(map(str, ours.values())) or None
        if named is None:
            raise  # another file's error, or an enclosing block's temporary: not ours to name
        raise OutputError(describe_os_error(named, error)) from None
    finally:
        _OPEN_TEMPORARIES.difference_update(owned)


@contextmanager
def atomic_output(path: PathLike, inputs: Iterable[PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary path to write instead of ``path``; rename it over ``path`` on success.

    The single-file form of :func:`atomic_outputs`, with the same refusals and guarantees.
    """
    with atomic_outputs([path], inputs) as (temporary,):
        yield temporary
