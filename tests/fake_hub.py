"""A model hub on 127.0.0.1, laid out like the Hugging Face hub, for the tests and the soak
benchmark (``benchmarks/soak.py`` imports this module; nothing here needs pytest).

:class:`FakeHub` serves repositories through the two endpoints the hub's clients use:
``/api/models/{repo}[/revision/{rev}]`` (commit and file listing) and
``/{repo}/resolve/{rev}/{file}`` (file contents, with Range), and logs every request.
:func:`serve` runs it on a free port in a daemon thread::

    hub = FakeHub()
    hub.add("acme/m0", model_directory)
    server, url = serve(hub)          # set HF_ENDPOINT (or huggingface_hub's ENDPOINT) to url
    ...
    server.shutdown(); server.server_close()

Misbehaviours, per ``(repo id in lower case, file name or "api")``: ``faults[...]`` is a list
consumed one per request; ``broken[...]`` applies to every request. Either names one of
``503``, ``gated`` (403 with the hub's GatedRepo code), ``html`` (not a hub), ``cut`` (half the
body, then the connection closes), ``damaged`` (one byte flipped), ``stall`` (no answer for
``stall_seconds``, then a 503), ``slow`` (8 KiB every 0.1 s).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

WEIGHTS = "model.safetensors"


def git_blob_id(data: bytes) -> str:
    """The git blob id the hub lists for a file that is not in LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Repositories served from memory, or from files read at each request (see the module
    docstring)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.faults: dict[tuple[str, str], list[str]] = {}
        self.broken: dict[tuple[str, str], str] = {}
        self.stall_seconds = 5.0
        self.log: list[tuple[float, str, str, str | None]] = []  # (time, repo, file or "api", Range)
        self._lock = threading.Lock()

    def add(self, repo_id: str, model: Path, in_memory: bool = True) -> str:
        """Serve the files of the directory ``model`` as ``repo_id`` (branches ``main`` and
        ``v1``); returns its commit. ``in_memory=False`` reads each file when it is asked for
        (for lists of many models); the listing is computed now either way."""
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        files = {f.name: (f.read_bytes() if in_memory else f) for f in sorted(Path(model).iterdir())}
        siblings = []
        for name, stored in files.items():
            data = stored if isinstance(stored, bytes) else stored.read_bytes()
            entry = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if name.endswith(".safetensors"):
                entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(entry)
        self.repos[repo_id] = {
            "id": repo_id, "sha": commit, "files": files, "siblings": siblings,
            "refs": {"main": commit, "v1": commit},
        }
        return commit

    def find(self, repo_id: str) -> dict | None:
        return next((r for key, r in self.repos.items() if key.lower() == repo_id.lower()), None)

    def data(self, repo: dict, name: str) -> bytes:
        stored = repo["files"][name]
        return stored if isinstance(stored, bytes) else stored.read_bytes()

    def fault(self, repo_id: str, name: str) -> str | None:
        with self._lock:
            pending = self.faults.get((repo_id.lower(), name))
            if pending:
                return pending.pop(0)
            return self.broken.get((repo_id.lower(), name))

    def requests(self, name: str | None = None, repo: str | None = None) -> list[tuple[float, str, str, str | None]]:
        with self._lock:
            return [r for r in self.log if (name is None or r[2] == name) and (repo is None or r[1] == repo)]

    def listing(self, repo: dict) -> dict:
        return {"id": repo["id"], "sha": repo["sha"], "siblings": repo["siblings"]}


class HubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, declared: int | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if declared is None else declared))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - the http.server interface
        hub: FakeHub = self.server.hub
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._api(hub, "/".join(parts[2:4]), parts[5] if len(parts) > 5 and parts[4] == "revision" else "main")
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._file(hub, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            else:
                self._send(404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on a stalled answer

    def _misbehave(self, fault: str | None) -> bool:
        if fault == "503":
            self._send(503, b"busy")
        elif fault == "gated":
            self._send(403, b"gated", {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"})
        elif fault == "html":
            self._send(200, b"<html>a web page</html>", {"Content-Type": "text/html"})
        elif fault == "stall":
            time.sleep(self.server.hub.stall_seconds)
            self._send(503)
        else:
            return False
        return True

    def _api(self, hub: FakeHub, repo_id: str, revision: str) -> None:
        with hub._lock:
            hub.log.append((time.monotonic(), repo_id, "api", None))
        if self._misbehave(hub.fault(repo_id, "api")):
            return
        repo = hub.find(repo_id)
        if repo is None:
            return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})
        if revision not in repo["refs"] and revision != repo["sha"]:
            return self._send(404, b"{}", {"X-Error-Code": "RevisionNotFound"})
        self._send(200, json.dumps(hub.listing(repo)).encode(), {"Content-Type": "application/json"})

    def _file(self, hub: FakeHub, repo_id: str, revision: str, name: str) -> None:
        with hub._lock:
            hub.log.append((time.monotonic(), repo_id, name, self.headers.get("Range")))
        fault = hub.fault(repo_id, name)
        if self._misbehave(fault):
            return
        repo = hub.find(repo_id)
        if repo is None or revision != repo["sha"] or name not in repo["files"]:
            return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
        data, status, headers = hub.data(repo, name), 200, {}
        if (wanted := self.headers.get("Range")) and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[6:-1])
            status, headers = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            data = data[start:]
        if fault == "damaged":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        if fault == "cut":
            self._send(status, data[: len(data) // 2], headers, declared=len(data))
            self.close_connection = True
        elif fault == "slow":
            self._send(status, b"", headers, declared=len(data))
            for start in range(0, len(data), 8192):
                self.wfile.write(data[start : start + 8192])
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self._send(status, data, headers)


def serve(hub: FakeHub, handler: type[HubHandler] = HubHandler, poll_interval: float = 0.1):
    """Serve ``hub`` on a free port of 127.0.0.1 in a daemon thread; returns the server (stop it
    with ``shutdown()`` and ``server_close()``) and its URL, ``http://127.0.0.1:PORT``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.hub = hub
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
