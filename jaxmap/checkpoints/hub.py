"""Hub downloads that never hang and fail with one clear line.

huggingface_hub's HTTP client has no timeout by default, so a host that accepts connections and
never answers stalls a job forever. Here every request gets a read timeout (no byte for
``JAXMAP_HUB_TIMEOUT`` seconds, default 20: a slow download that keeps moving goes on), a
transient failure (timeout, refused or reset connection, HTTP 5xx) is retried
``JAXMAP_HUB_RETRIES`` times (default 3) with backoff, and what is left becomes a
:class:`~jaxmap.errors.HubError` naming the model and the host problem.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlparse

from ..errors import HubError

# What validation needs (configs, tokenizers: JSON, sentencepiece, BPE merges, tiktoken; the
# shard index) and, later, the weights. Pickled weights are never downloaded.
METADATA_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken"]
WEIGHT_FILES = ["*.safetensors"]


def _setting(name: str, default: float, kind=float):
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        parsed = kind(value)
    except ValueError:
        parsed = -1
    if parsed < 0:
        raise HubError(f"{name}={value!r}: expected a non-negative number")
    return parsed


def _use_timeouts(seconds: float) -> None:
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils import _http

    def client_with_timeouts():
        client = _http.default_client_factory()
        client.timeout = seconds
        return client

    # Requests that name no timeout take the client's; file downloads read this constant.
    set_client_factory(client_with_timeouts)
    constants.HF_HUB_DOWNLOAD_TIMEOUT = seconds


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _fetch(repo_id: str, revision: str | None, patterns, timeout: float) -> Path:
    from huggingface_hub import HfApi, snapshot_download

    if not _offline():
        # Resolve the commit ourselves: huggingface_hub asks for it with no timeout at all.
        revision = HfApi().model_info(repo_id, revision=revision or None, timeout=timeout).sha
    return Path(
        snapshot_download(
            repo_id, revision=revision or None, allow_patterns=list(patterns), etag_timeout=timeout
        )
    )


def _host() -> str:
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).netloc or constants.ENDPOINT


def _describe(error: BaseException) -> tuple[str, bool]:
    """What went wrong, and whether trying again may help."""
    from huggingface_hub import errors

    if isinstance(error, errors.GatedRepoError):
        return "gated on the hub: accept its licence and log in (huggingface-cli login)", False
    if isinstance(error, errors.RepositoryNotFoundError):
        return "not found on the hub (a wrong id, a private or gated model)", False
    if isinstance(error, errors.RevisionNotFoundError):
        return "that revision does not exist on the hub", False
    if isinstance(error, errors.HFValidationError):
        return f"not a valid hub id ({str(error).splitlines()[0]})", False
    if isinstance(error, errors.HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status is not None and status < 500:
            return f"the hub answered HTTP {status}", False
        return f"the hub answered HTTP {status or 'with an error'}", True
    if isinstance(error, errors.LocalEntryNotFoundError):
        if _offline():
            return "not in the local hub cache, and HF_HUB_OFFLINE forbids downloading", False
        return f"cannot reach {_host()} and the model is not in the local hub cache", True
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"cannot reach {_host()}: {type(error).__name__}{': ' + text if text else ''}", True


def download(reference: str, repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    """The local snapshot directory of ``repo_id`` at ``revision`` (files matching ``patterns``)."""
    timeout = _setting("JAXMAP_HUB_TIMEOUT", 20.0)
    tries = 1 + _setting("JAXMAP_HUB_RETRIES", 3, int)
    _use_timeouts(timeout)
    for attempt in range(1, tries + 1):
        try:
            return _fetch(repo_id, revision, patterns, timeout)
        except Exception as error:  # noqa: BLE001 - every failure becomes one line below
            problem, transient = _describe(error)
            if not transient:
                raise HubError(f"{reference}: {problem}") from None
            if attempt == tries:
                raise HubError(
                    f"{reference}: {problem} (gave up after {tries} tries, {timeout:g} s timeout "
                    "each; set JAXMAP_HUB_TIMEOUT / JAXMAP_HUB_RETRIES)"
                ) from None
            time.sleep(min(2.0 ** (attempt - 1), 30.0))
    raise AssertionError("unreachable")


def weight_bytes(reference: str, repo_id: str, revision: str) -> int:
    """Size of a hub model's safetensors at ``revision``, from the hub's file listing."""
    from huggingface_hub import HfApi

    timeout = _setting("JAXMAP_HUB_TIMEOUT", 20.0)
    try:
        info = HfApi().model_info(repo_id, revision=revision, timeout=timeout, files_metadata=True)
    except Exception as error:  # noqa: BLE001 - becomes one line
        raise HubError(f"{reference}: cannot list its files ({_describe(error)[0]})") from None
    return sum(s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors"))
