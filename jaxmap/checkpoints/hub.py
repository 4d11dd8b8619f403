"""Hub access that never hangs and fails with one clear line.

huggingface_hub's API calls wait without limit unless given a timeout, and its file downloads
retry a failed metadata request with a 60-second timeout up to five more times, so a host that
accepts connections and never answers stalls a job for many minutes. jaxmap therefore makes its own requests through
huggingface_hub's HTTP session (proxies, certificates and the login token still apply) and lays
the files out exactly as huggingface_hub's cache does (``blobs/``, ``snapshots/<commit>/``,
``refs/``), so either library finds what the other downloaded.

Every request has a timeout (no byte for ``JAXMAP_HUB_TIMEOUT`` seconds, default 20), and a file
download must keep moving: one that receives less than ``JAXMAP_HUB_MIN_RATE`` bytes/s (default
50,000; 0 turns the check off) over ``JAXMAP_HUB_RATE_WINDOW`` seconds (default 60) is stopped,
since a server that trickles a byte now and then never times out. A transient failure (timeout,
refused or reset connection, HTTP 5xx, 408, 429, a download too slow or whose size or hash is
wrong) is retried ``JAXMAP_HUB_RETRIES`` times (default 3) with exponential backoff; an
interrupted download resumes where it stopped. What is left becomes a
:class:`~jaxmap.errors.HubError` naming the model and the host problem.

A host that :data:`UNREACHABLE_AFTER` requests in a row (each after its retries) could not reach
is given up: every request to it fails at once, naming the host and the last error, so that a
1,000-model list on a hub without a route ends in seconds, not hours. Any answer from the host
(even an HTTP error, or a download that it began and then broke off) resets the count. After
:data:`HOST_RETRY_AFTER` seconds one request tries the host again; it resets the count if it
gets an answer, and gives the host up again if not.

Resolving a hub id (:data:`HUB`) downloads its config, tokenizer files and shard index only; the
weights download later, with :meth:`jaxmap.checkpoints.Checkpoint.fetch_weights`. This module
remembers which weight files it downloaded in this process, so that deleting a scored model's
weights never touches files that were in the cache before.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import quote, urlparse

from .._version import __version__
from ..errors import CheckpointError, HubError, JaxmapError
from .checkpoint import Checkpoint, Resolver
from .validation import validate_weights

__all__ = [
    "DEFAULT_MIN_RATE",
    "DEFAULT_RATE_WINDOW",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "HOST_RETRY_AFTER",
    "HUB",
    "HubFile",
    "HubResolver",
    "HubSnapshot",
    "METADATA_PATTERNS",
    "UNREACHABLE_AFTER",
    "delete_downloads",
    "download",
    "downloaded_files",
    "fetch_lock",
    "hub_settings",
    "rate_settings",
    "resolve_snapshot",
]

DEFAULT_TIMEOUT = 20.0
DEFAULT_RETRIES = 3
# A download slower than 50 kB/s over a minute is stuck, not slow: a 1 GB shard would take 6 hours.
DEFAULT_MIN_RATE = 50_000
DEFAULT_RATE_WINDOW = 60.0
# Requests in a row (each after its retries) that could not reach a host before it is given up:
# few enough that a hub without a route costs a job three models' tries, not one per model;
# more than one, so that one model's bad luck does not fail a list.
UNREACHABLE_AFTER = 3
# Seconds after which a given-up host is tried again by one request, in case it is back.
HOST_RETRY_AFTER = 60.0
# Top-level files that validation and the tokenizer need: config, tokenizers (fast, sentencepiece,
# BPE, WordPiece, tiktoken, chat templates) and the shard index. Never weights.
METADATA_PATTERNS = (
    "config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "vocab.txt", "*.tiktoken", "chat_template*", "model.safetensors.index.json",
)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# A hub id as a model reference: org/name, optionally @revision (a branch, tag or commit).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_MAX_BACKOFF = 30.0
_T = TypeVar("_T")


def hub_settings() -> tuple[float, int]:
    """``(timeout seconds, retries)`` from ``JAXMAP_HUB_TIMEOUT`` and ``JAXMAP_HUB_RETRIES``."""
    timeout = _setting("JAXMAP_HUB_TIMEOUT", DEFAULT_TIMEOUT, float, "a positive number of seconds")
    retries = _setting("JAXMAP_HUB_RETRIES", DEFAULT_RETRIES, int, "a whole number, 0 or more")
    if timeout <= 0:
        raise JaxmapError(f"JAXMAP_HUB_TIMEOUT={timeout:g}: expected a positive number of seconds")
    return timeout, retries


def rate_settings() -> tuple[float, float]:
    """``(minimum bytes/s, window seconds)`` from ``JAXMAP_HUB_MIN_RATE`` and
    ``JAXMAP_HUB_RATE_WINDOW``; a minimum of 0 turns the check off."""
    rate = _setting("JAXMAP_HUB_MIN_RATE", DEFAULT_MIN_RATE, float, "a number of bytes per second, 0 or more")
    window = _setting("JAXMAP_HUB_RATE_WINDOW", DEFAULT_RATE_WINDOW, float, "a positive number of seconds")
    if window <= 0:
        raise JaxmapError(f"JAXMAP_HUB_RATE_WINDOW={window:g}: expected a positive number of seconds")
    return rate, window


def _setting(name: str, default, kind, expected: str):
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        parsed = kind(value)
    except ValueError:
        raise JaxmapError(f"{name}={value!r}: expected {expected}") from None
    if parsed < 0:
        raise JaxmapError(f"{name}={value!r}: expected {expected}")
    return parsed


@dataclass(frozen=True)
class HubFile:
    """One file of a hub commit, as the hub lists it."""

    name: str
    size: int | None
    blob_id: str | None  # git blob id (sha1 of the git object), or the LFS pointer's
    sha256: str | None  # LFS files only

    @property
    def blob(self) -> str | None:
        """The file's name under ``blobs/`` in huggingface_hub's cache (its ETag)."""
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class HubSnapshot:
    """A hub repository at one commit, and where its files go in the local hub cache.

    ``files`` is the hub's listing (name → :class:`HubFile`); it is None for a snapshot found in
    the cache with ``HF_HUB_OFFLINE`` set, when nothing can be downloaded.
    """

    repo_id: str
    commit: str
    directory: Path
    files: dict[str, HubFile] | None

    @property
    def repository(self) -> Path:
        """The repository's folder in the cache (``models--org--name``)."""
        return self.directory.parent.parent


def _host() -> str:
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).netloc or constants.ENDPOINT


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_root() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _folder(repo_id: str) -> str:
    return "--".join(["models", *repo_id.split("/")])


class _Damaged(Exception):
    """A download whose size or hash differs from the hub's listing (worth another try)."""


class _Cancelled(Exception):
    """The caller asked the download to stop."""


class _NotAHub(Exception):
    """The endpoint answered, but not as a model hub answers."""


class _TooSlow(Exception):
    """A download that received less than the minimum rate over a whole window."""


class _BrokeOff(Exception):
    """A download the host answered and then broke off (closed or went silent mid-file): the
    host is reachable; the transfer failed."""


def _broken_off(chunks, name: str):
    """``chunks`` of a file's answer; a transport error among them is raised as
    :class:`_BrokeOff`, which does not count against the host (see the module docstring)."""
    import httpx2

    try:
        yield from chunks
    except httpx2.TransportError as error:
        raise _BrokeOff(f"{name}: {_first_line(error) or type(error).__name__}") from None


def _problem(error: BaseException, revision: str | None, tries: int, timeout: float) -> tuple[str, bool]:
    """What went wrong, in words, and whether trying again may help."""
    import httpx2
    from huggingface_hub import errors

    host = _host()
    if isinstance(error, errors.GatedRepoError):
        return "gated on the hub: accept its licence on the model page and log in (hf auth login)", False
    if isinstance(error, errors.RepositoryNotFoundError):
        status = error.response.status_code if error.response is not None else 404
        return f"not found on the hub ({status}), or private or gated (log in with hf auth login)", False
    if isinstance(error, errors.RevisionNotFoundError):
        return f"revision {revision or 'main'!r} not found on the hub", False
    if isinstance(error, errors.RemoteEntryNotFoundError):
        path = error.response.url.path if error.response is not None else "a listed file"
        return f"{host} lists a file it then does not serve ({path})", False
    if isinstance(error, errors.HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        transient = status is None or status >= 500 or status in (408, 429)
        said = f"{host} answered HTTP {status or '(no status)'}"
        return (f"{said} ({_tries(tries)})" if transient else said), transient
    if isinstance(error, errors.OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so nothing can be downloaded", False
    if isinstance(error, errors.HFValidationError):
        return f"not a valid hub id ({str(error).splitlines()[0]})", False
    if isinstance(error, _NotAHub):
        return f"{host} did not answer as a model hub does ({error})", False
    if isinstance(error, _Damaged):
        return f"download from {host} arrived damaged: {error} ({_tries(tries)})", True
    if isinstance(error, _TooSlow):
        return f"download from {host} too slow: {error} ({_tries(tries)})", True
    if isinstance(error, _BrokeOff):
        return f"download from {host} broke off: {error} ({_tries(tries)})", True
    if isinstance(error, httpx2.TimeoutException):
        return f"cannot reach {host}: timed out after {_tries(tries)} ({timeout:g} s each)", True
    if isinstance(error, (httpx2.UnsupportedProtocol, httpx2.LocalProtocolError, httpx2.TooManyRedirects)):
        return f"cannot use {host}: {type(error).__name__}: {_first_line(error)}", False
    if isinstance(error, httpx2.TransportError):
        return f"cannot reach {host}: {_first_line(error) or type(error).__name__} ({_tries(tries)})", True
    if isinstance(error, httpx2.DecodingError):
        return f"{host} sent an undecodable answer: {_first_line(error)} ({_tries(tries)})", True
    raise error


def _tries(tries: int) -> str:
    return f"{tries} tries" if tries != 1 else "1 try"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the host could not be reached (no answer), as opposed to an answer
    the host gave or a request that could not be made."""
    import httpx2

    return isinstance(error, httpx2.TransportError) and not isinstance(
        error, (httpx2.UnsupportedProtocol, httpx2.LocalProtocolError)
    )


@dataclass
class _HostFailures:
    """Requests in a row that could not reach one host, the last one's problem, and since when
    the host is given up (None while it is not)."""

    count: int = 0
    problem: str = ""
    given_up_at: float | None = None


_HOSTS: dict[str, _HostFailures] = {}
_HOSTS_LOCK = threading.Lock()


def _refuse_if_given_up(reference: str, host: str) -> None:
    """Raise the given-up host's one-line reason, unless it is time for one request to try again."""
    with _HOSTS_LOCK:
        state = _HOSTS.get(host)
        if state is None or state.given_up_at is None:
            return
        if time.monotonic() - state.given_up_at < HOST_RETRY_AFTER:
            raise HubError(
                f"{reference}: not tried: the last {state.count} requests could not reach {host} "
                f"(last: {state.problem})"
            )
        # This request tries the host; the others still fail at once until it knows.
        state.given_up_at = time.monotonic()


def _record_host(host: str, problem: str | None) -> None:
    """Count a request that could not reach ``host`` (``problem``), or forget its failures
    (``None``: the host answered)."""
    with _HOSTS_LOCK:
        if problem is None:
            _HOSTS.pop(host, None)
            return
        state = _HOSTS.setdefault(host, _HostFailures())
        state.count += 1
        state.problem = problem
        if state.count >= UNREACHABLE_AFTER:
            state.given_up_at = time.monotonic()


def _retrying(
    reference: str, call: Callable[[], _T], revision: str | None = None,
    cancel: threading.Event | None = None,
) -> _T:
    """``call()``, retried on transient failures; anything left becomes one HubError line.

    A host given up (see the module docstring) fails at once, without a request.
    """
    timeout, retries = hub_settings()
    host = _host()
    _refuse_if_given_up(reference, host)
    tries = retries + 1
    for attempt in range(1, tries + 1):
        try:
            result = call()
        except _Cancelled:
            raise HubError(f"{reference}: download cancelled") from None
        except Exception as error:  # noqa: BLE001 - _problem re-raises what it does not know
            problem, transient = _problem(error, revision, attempt, timeout)
            if not transient or attempt == tries:
                _record_host(host, problem if _unreachable(error) else None)
                raise HubError(f"{reference}: {problem}") from None
        else:
            _record_host(host, None)
            return result
        pause = min(2.0 ** (attempt - 1), _MAX_BACKOFF)
        if cancel is None:
            time.sleep(pause)
        elif cancel.wait(pause):
            raise HubError(f"{reference}: download cancelled")
    raise AssertionError("unreachable")


def _model_info(repo_id: str, revision: str | None, timeout: float):
    from huggingface_hub import HfApi

    try:
        api = HfApi(library_name="jaxmap", library_version=__version__)
        info = api.model_info(repo_id, revision=revision, timeout=timeout, files_metadata=True)
    except (KeyError, TypeError, ValueError) as error:
        from huggingface_hub import errors

        if isinstance(error, errors.HFValidationError):
            raise
        raise _NotAHub(f"{type(error).__name__}: {_first_line(error)}") from None
    if not isinstance(info.sha, str) or not _COMMIT.match(info.sha) or info.siblings is None:
        raise _NotAHub("no commit id or file listing in its answer")
    return info


def resolve_snapshot(reference: str, repo_id: str, revision: str | None) -> HubSnapshot:
    """Resolve ``repo_id@revision`` to a commit and download its config and tokenizer files.

    With ``HF_HUB_OFFLINE`` set, the snapshot comes from the local hub cache. Raises
    :class:`HubError` naming ``reference`` and the host problem.
    """
    if _offline():
        return _cached_snapshot(reference, repo_id, revision)
    timeout, _ = hub_settings()
    info = _retrying(reference, lambda: _model_info(repo_id, revision, timeout), revision)
    files = {
        s.rfilename: HubFile(
            s.rfilename,
            s.lfs.size if s.lfs else s.size,
            s.blob_id,
            s.lfs.sha256 if s.lfs else None,
        )
        for s in info.siblings
    }
    repository = _cache_root() / _folder(info.id)
    snapshot = HubSnapshot(info.id, info.sha, repository / "snapshots" / info.sha, files)
    metadata = [
        name for name in files
        if "/" not in name and any(fnmatch.fnmatch(name, p) for p in METADATA_PATTERNS)
    ]
    download(reference, snapshot, metadata)
    if revision != info.sha:
        # Lets a later run with HF_HUB_OFFLINE set find this commit under the same name.
        _write_atomically(repository / "refs" / (revision or "main"), info.sha.encode(), reference)
    return snapshot


def _cached_snapshot(reference: str, repo_id: str, revision: str | None) -> HubSnapshot:
    root = _cache_root()
    repository = root / _folder(repo_id)
    if not repository.is_dir() and root.is_dir():
        # The hub treats ids case-insensitively; so does this lookup.
        wanted = _folder(repo_id).lower()
        repository = next((p for p in root.iterdir() if p.name.lower() == wanted), repository)
    offline = f"not in the local hub cache ({root}), and HF_HUB_OFFLINE forbids downloading"
    if revision is not None and _COMMIT.match(revision):
        commit = revision
    else:
        try:
            commit = (repository / "refs" / (revision or "main")).read_text().strip()
        except OSError:
            missing = f"revision {revision!r} " if revision else ""
            raise HubError(f"{reference}: {missing}{offline}") from None
    directory = repository / "snapshots" / commit
    if not directory.is_dir():
        raise HubError(f"{reference}: commit {commit} {offline}")
    cached_id = repository.name.removeprefix("models--").replace("--", "/", 1)
    return HubSnapshot(cached_id, commit, directory, None)


# The files this process added to each snapshot directory (never files that were in the cache
# before), each with whether it also wrote the blob; and one lock per snapshot so that two threads
# never download one file.
_DOWNLOADED: dict[Path, dict[str, bool]] = {}
_LOCKS: dict[Path, threading.Lock] = {}
_REGISTRY = threading.Lock()


def fetch_lock(directory: Path) -> threading.Lock:
    """The lock held while a snapshot's files download (one per snapshot directory)."""
    with _REGISTRY:
        return _LOCKS.setdefault(directory, threading.Lock())


def downloaded_files(directory: Path) -> set[str]:
    """Names of the files this process downloaded into ``directory`` and has not deleted."""
    with _REGISTRY:
        return set(_DOWNLOADED.get(directory, {}))


def download(
    reference: str, snapshot: HubSnapshot, names: list[str], cancel: threading.Event | None = None
) -> list[Path]:
    """Download ``names`` of ``snapshot`` into the hub cache; returns the files it added.

    Files already in the snapshot are kept as they are. ``cancel`` stops a download between
    chunks (it then raises :class:`HubError` saying so).
    """
    if snapshot.files is None:
        raise HubError(
            f"{reference}: {', '.join(names)} not in the local hub cache ({snapshot.directory}), "
            "and HF_HUB_OFFLINE forbids downloading"
        )
    added = []
    for name in names:
        link = snapshot.directory / name
        if link.exists():
            continue
        listed = snapshot.files.get(name)
        if listed is None:
            raise HubError(f"{reference}: the hub repository has no file {name}")
        blob, fetched = _fetch_blob(reference, snapshot, listed, cancel)
        _link(link, blob, reference)
        with _REGISTRY:
            _DOWNLOADED.setdefault(snapshot.directory, {})[name] = fetched
        added.append(link)
    return added


def _fetch_blob(
    reference: str, snapshot: HubSnapshot, file: HubFile, cancel: threading.Event | None
) -> tuple[Path, bool]:
    """The file's blob in the cache, and whether it was downloaded now (not found there)."""
    from huggingface_hub import constants

    blobs = snapshot.repository / "blobs"
    if file.blob is not None:
        existing = blobs / file.blob
        if existing.is_file() and (file.size is None or existing.stat().st_size == file.size):
            return existing, False
    url = f"{constants.ENDPOINT}/{snapshot.repo_id}/resolve/{snapshot.commit}/{quote(file.name)}"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        handle, partial_name = tempfile.mkstemp(prefix=f".{file.blob or 'download'}.", suffix=".incomplete", dir=blobs)
        os.close(handle)
    except OSError as error:
        raise CheckpointError(f"{reference}: cannot write to the hub cache {blobs} ({error.strerror or error})") from None
    partial = _Partial(Path(partial_name), file)
    try:
        _retrying(reference, lambda: partial.receive(url, cancel), cancel=cancel)
        target = blobs / (file.blob or partial.sha256)
        os.replace(partial.path, target)
        return target, True
    except OSError as error:
        raise CheckpointError(
            f"{reference}: cannot write {file.name} to the hub cache {blobs} ({error.strerror or error})"
        ) from None
    finally:
        partial.path.unlink(missing_ok=True)


class _Partial:
    """A file being downloaded: resumes with a Range request, checks size and hashes at the end."""

    def __init__(self, path: Path, file: HubFile) -> None:
        self.path, self.file = path, file
        self._restart()

    def _restart(self) -> None:
        self.received = 0
        self._sha256 = hashlib.sha256()
        # A git blob id is the sha1 of "blob <size>\0" and the content.
        self._git = hashlib.sha1(f"blob {self.file.size}\0".encode()) if self.file.size is not None else None
        self.path.write_bytes(b"")

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def receive(self, url: str, cancel: threading.Event | None) -> None:
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        timeout, _ = hub_settings()
        min_rate, window = rate_settings()
        headers = build_hf_headers(library_name="jaxmap", library_version=__version__)
        if self.received:
            headers["Range"] = f"bytes={self.received}-"
        with get_session().stream("GET", url, headers=headers, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                hf_raise_for_status(response)
            if response.status_code != 206 and self.received:
                self._restart()  # the server sent the whole file again
            window_start, window_received = time.monotonic(), self.received
            with open(self.path, "ab") as out:
                # As the bytes arrive, so that a cancel takes effect at once.
                for chunk in _broken_off(response.iter_bytes(), self.file.name):
                    if cancel is not None and cancel.is_set():
                        raise _Cancelled
                    out.write(chunk)
                    self._sha256.update(chunk)
                    if self._git is not None:
                        self._git.update(chunk)
                    self.received += len(chunk)
                    # Checked as bytes arrive: a trickle never lets the timeout fire, and a
                    # silence longer than the timeout is the timeout's to report.
                    elapsed = time.monotonic() - window_start
                    if min_rate and elapsed >= window:
                        got = self.received - window_received
                        if got < min_rate * elapsed:
                            raise _TooSlow(
                                f"{self.file.name} received {got} bytes in {elapsed:.1f} s, under "
                                f"JAXMAP_HUB_MIN_RATE ({min_rate:g} bytes/s over {window:g} s)"
                            )
                        window_start, window_received = time.monotonic(), self.received
        self._check()

    def _check(self) -> None:
        file, problem = self.file, None
        if file.size is not None and self.received != file.size:
            problem = f"{file.name} has {self.received} bytes, the hub lists {file.size}"
        elif file.sha256 is not None and self.sha256 != file.sha256:
            problem = f"{file.name}'s sha256 differs from the hub's"
        elif file.sha256 is None and file.blob_id and self._git and self._git.hexdigest() != file.blob_id:
            problem = f"{file.name}'s git blob id differs from the hub's"
        if problem:
            self._restart()
            raise _Damaged(problem)


def _link(link: Path, blob: Path, reference: str) -> None:
    """Point ``link`` at ``blob`` with a relative symlink, as huggingface_hub's cache does."""
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        temporary = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}.link")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(os.path.relpath(blob, link.parent))
        os.replace(temporary, link)
    except OSError as error:
        raise CheckpointError(f"{reference}: cannot write {link} ({error.strerror or error})") from None


def _write_atomically(path: Path, data: bytes, reference: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as error:
        raise CheckpointError(f"{reference}: cannot write {path} ({error.strerror or error})") from None


def delete_downloads(directory: Path, names: list[str] | None = None) -> int:
    """Delete files this process downloaded into the snapshot ``directory``; returns bytes freed.

    ``names`` limits it to those files. A blob that was in the cache before, or that another
    snapshot of the same repository still links to, is kept (only this snapshot's link goes).
    """
    with _REGISTRY:
        owned = _DOWNLOADED.get(directory, {})
        chosen = {name: owned.pop(name) for name in sorted(owned) if names is None or name in names}
    repository = directory.parent.parent
    freed = 0
    for name, fetched in chosen.items():
        link = directory / name
        blob = link.resolve()
        link.unlink(missing_ok=True)
        if not fetched or blob.parent != repository / "blobs" or not blob.is_file() or _still_linked(repository, blob):
            continue
        size = blob.stat().st_size
        blob.unlink(missing_ok=True)
        freed += size
    return freed


def _still_linked(repository: Path, blob: Path) -> bool:
    for path in (repository / "snapshots").rglob("*"):
        if path.is_symlink() and path.resolve() == blob:
            return True
    return False


class HubResolver(Resolver):
    """Hub ids, ``org/name`` or ``org/name@revision``, that name nothing on disk (a path of the
    same spelling is a local reference). The checkpoint's directory is the commit's snapshot in
    the hub cache, holding config and tokenizer files at first; its weights download with
    :meth:`~jaxmap.checkpoints.Checkpoint.fetch_weights` and go with
    :meth:`~jaxmap.checkpoints.Checkpoint.release_weights`."""

    source = "hub"

    def claims(self, reference: str, path: Path) -> bool:
        """Spelled as a hub id, and not a path that exists."""
        return not path.exists() and _HUB_ID.match(reference) is not None

    def resolve(self, reference: str, path: Path, cache_dir: str | Path | None, progress: bool) -> Checkpoint:
        """The commit ``reference`` names, its config and tokenizer files downloaded."""
        # Config, tokenizer and shard index only: validating a 1,000-model list must not download
        # every model's weights first.
        repo_id, _, revision = reference.partition("@")
        snapshot = resolve_snapshot(reference, repo_id, revision or None)
        if not (snapshot.directory / "config.json").is_file():
            raise CheckpointError(f"{reference}: the hub repository has no config.json")
        return Checkpoint(
            reference, snapshot.directory, snapshot.commit, self, f"{snapshot.repo_id}@{snapshot.commit}", snapshot
        )

    def weights_pending(self, checkpoint: Checkpoint) -> bool:
        """Whether a shard is not in the snapshot directory yet."""
        try:
            names = checkpoint.shard_names()
        except CheckpointError:
            return False  # validation names the broken index
        return not all((checkpoint.directory / name).is_file() for name in names)

    def download_bytes(self, checkpoint: Checkpoint) -> int:
        """The listed sizes of the shards not on disk yet (0 offline, with no listing)."""
        if not checkpoint.weights_pending or checkpoint.hub is None or checkpoint.hub.files is None:
            return 0
        pending = [n for n in checkpoint.shard_names() if not (checkpoint.directory / n).is_file()]
        return sum(checkpoint.hub.files[n].size or 0 for n in pending if n in checkpoint.hub.files)

    def fetch_weights(self, checkpoint: Checkpoint, cancel: threading.Event | None) -> list[Path]:
        """Download the shards not on disk (one thread per snapshot at a time; the others wait
        for it), then check every header."""
        if checkpoint.hub is None:
            raise HubError(f"{checkpoint.reference}: this checkpoint was not resolved from the hub (use resolve())")
        with fetch_lock(checkpoint.directory):
            pending = [n for n in checkpoint.weight_names() if not (checkpoint.directory / n).is_file()]
            if not pending:
                return []
            added = download(checkpoint.reference, checkpoint.hub, pending, cancel)
            validate_weights(checkpoint)
        return added

    def release_weights(self, checkpoint: Checkpoint) -> int:
        """Delete the safetensors files this process downloaded into the snapshot."""
        weights = [n for n in downloaded_files(checkpoint.directory) if n.endswith(".safetensors")]
        return delete_downloads(checkpoint.directory, weights)


HUB = HubResolver()
