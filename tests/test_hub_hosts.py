"""Hub hosts that fail at list scale, against real sockets on 127.0.0.1: a closed port (connection
refused) and a host that accepts and never answers are given up after a few models, so a job of
30 hub references ends after a bounded number of connection attempts and still scores its local
models; a host that answers again resets the count; a download that trickles fails on the
minimum rate while local models behind it score."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from jaxmap.checkpoints import hub, resolve
from jaxmap.errors import HubError, JaxmapError
from jaxmap.jobs import score_job
from fake_hub import WEIGHTS, FakeHub, HubHandler, serve

HUB_REFERENCES = [f"acme/m{i}" for i in range(30)]
# huggingface_hub asks the endpoint for its registry of agent harnesses once per process, on the
# first request it builds headers for; whichever test comes first pays it.
HF_OWN_REQUESTS = 1


@pytest.fixture
def endpoint(tmp_path, monkeypatch):
    """Points huggingface_hub at a URL given later (``set(url)``), with an empty hub cache and
    a fresh record of given-up hosts."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_HOSTS", {})
    return lambda url: monkeypatch.setattr(constants, "ENDPOINT", url)


def _serve(handler, fake: FakeHub):
    server, url = serve(fake, handler, poll_interval=0.05)
    return server, url.removeprefix("http://")


def _expect_given_up(summary, host: str, tries: int) -> None:
    """Every hub reference failed naming the host; the first UNREACHABLE_AFTER after their tries,
    the rest at once with the last one's error."""
    failures = summary.failures
    assert list(failures) == HUB_REFERENCES
    tried = [failures[r] for r in HUB_REFERENCES[: hub.UNREACHABLE_AFTER]]
    assert all(reason.startswith(f"cannot reach {host}: ") and f"{tries} tries" in reason for reason in tried)
    last = tried[-1]
    given_up = f"not tried: the last {hub.UNREACHABLE_AFTER} requests could not reach {host} (last: {last})"
    assert [failures[r] for r in HUB_REFERENCES[hub.UNREACHABLE_AFTER :]] == [given_up] * 27
    assert all("\n" not in reason for reason in failures.values())


def test_a_closed_port_is_given_up_and_local_models_score(endpoint, tiny_models, text_file, tmp_path, monkeypatch):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: every connection is refused at once
    endpoint(f"http://127.0.0.1:{port}")
    monkeypatch.setenv("JAXMAP_HUB_RETRIES", "1")
    # A refused connection leaves no trace at a server; count the attempts where they are made.
    attempts, connect = [], socket.create_connection

    def counting(address, *args, **kwargs):
        if address[1] == port:
            attempts.append(address)
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    local = [str(m) for m in tiny_models[:2]]
    summary = score_job(HUB_REFERENCES + local, text_file, tmp_path / "s.h5", progress=False)
    assert [o.reference for o in summary.with_status("scored")] == local
    _expect_given_up(summary, f"127.0.0.1:{port}", tries=2)
    assert "Connection refused" in summary.failures["acme/m0"]
    assert 0 < len(attempts) <= hub.UNREACHABLE_AFTER * 2 + HF_OWN_REQUESTS, "three models' two tries, none after"


@pytest.fixture
def silent_host():
    """A socket on 127.0.0.1 that accepts connections and never answers; yields its port and
    the number of connections accepted so far."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.05)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], lambda: len(held)
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_a_host_that_never_answers_is_given_up_and_local_models_score(endpoint, silent_host, tiny_models, text_file, tmp_path, monkeypatch):
    port, accepted = silent_host
    endpoint(f"http://127.0.0.1:{port}")
    monkeypatch.setenv("JAXMAP_HUB_TIMEOUT", "0.2")
    monkeypatch.setenv("JAXMAP_HUB_RETRIES", "1")
    local = str(tiny_models[0])
    summary = score_job([*HUB_REFERENCES[:15], local, *HUB_REFERENCES[15:]], text_file, tmp_path / "s.h5", progress=False)
    assert [o.reference for o in summary.with_status("scored")] == [local]
    _expect_given_up(summary, f"127.0.0.1:{port}", tries=2)
    assert "timed out after 2 tries (0.2 s each)" in summary.failures["acme/m0"]
    time.sleep(0.2)  # lets the accepting thread catch up with the last connection
    assert 0 < accepted() <= hub.UNREACHABLE_AFTER * 2 + HF_OWN_REQUESTS, "three models' two tries, none after"


class _Handler(HubHandler):
    """The fake hub, except that it drops every connection for repositories in ``hub.dropped``
    without an answer, and trickles ``hub.trickled`` repositories' weights a byte at a time."""

    def _api(self, fake, repo_id, revision):
        if repo_id in fake.dropped:
            with fake._lock:
                fake.log.append((time.monotonic(), repo_id, "api", None))
            self.close_connection = True
            return
        super()._api(fake, repo_id, revision)

    def _file(self, fake, repo_id, revision, name):
        if repo_id not in fake.trickled or name != WEIGHTS:
            return super()._file(fake, repo_id, revision, name)
        with fake._lock:
            fake.log.append((time.monotonic(), repo_id, name, self.headers.get("Range")))
        data = fake.data(fake.find(repo_id), name)
        self._send(200, b"", declared=len(data))
        deadline = time.monotonic() + 10  # the client gives up long before
        for byte in data:
            if time.monotonic() > deadline:
                break
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(0.05)


@pytest.fixture
def odd_hub(endpoint, tiny_models):
    fake = FakeHub()
    fake.add("acme/good", tiny_models[0])
    fake.add("acme/slow", tiny_models[1])
    fake.dropped, fake.trickled = {f"acme/drop{i}" for i in range(6)}, {"acme/slow"}
    server, host = _serve(_Handler, fake)
    endpoint(f"http://{host}")
    fake.host = host
    yield fake
    server.shutdown()
    server.server_close()


def _fails(reference: str) -> str:
    with pytest.raises(HubError) as caught:
        resolve(reference)
    return str(caught.value)


def test_an_answer_resets_the_count_and_a_given_up_host_is_tried_again_later(odd_hub, monkeypatch):
    monkeypatch.setenv("JAXMAP_HUB_RETRIES", "0")
    # Two unreachable, an answer, two more: the count starts again, so every one is asked.
    for reference in ["acme/drop0", "acme/drop1", "acme/good", "acme/drop2", "acme/drop3"]:
        if reference == "acme/good":
            resolve(reference)
        else:
            assert _fails(reference).startswith(f"{reference}: cannot reach {odd_hub.host}: ")
    assert len(odd_hub.requests("api")) == 5
    # A third in a row gives the host up: the next reference is not asked, though the host
    # would answer it.
    _fails("acme/drop4")
    assert _fails("acme/good").startswith(f"acme/good: not tried: the last 3 requests could not reach {odd_hub.host}")
    assert len(odd_hub.requests("api")) == 6
    # Once HOST_RETRY_AFTER has passed, one request tries again; its answer resets the count.
    monkeypatch.setattr(hub, "HOST_RETRY_AFTER", 0.0)
    resolve("acme/good")
    assert _fails("acme/drop5").startswith("acme/drop5: cannot reach")
    assert len(odd_hub.requests("api")) == 8


def test_a_trickling_download_fails_on_the_minimum_rate_while_local_models_score(odd_hub, tiny_models, text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMAP_HUB_RETRIES", "1")
    monkeypatch.setenv("JAXMAP_HUB_MIN_RATE", "1000")
    monkeypatch.setenv("JAXMAP_HUB_RATE_WINDOW", "0.3")
    local = [str(m) for m in tiny_models[2:4]]
    summary = score_job(["acme/slow", *local], text_file, tmp_path / "s.h5", progress=False)
    # The local models scored while the hub model downloaded, not after it failed.
    assert [(o.reference, o.status) for o in summary.outcomes] == [(local[0], "scored"), (local[1], "scored"), ("acme/slow", "failed")]
    reason = summary.failures["acme/slow"]
    assert reason.startswith(f"download from {odd_hub.host} too slow: {WEIGHTS} received ")
    assert reason.endswith("under JAXMAP_HUB_MIN_RATE (1000 bytes/s over 0.3 s) (2 tries)") and "\n" not in reason
    assert len(odd_hub.requests(WEIGHTS, "acme/slow")) == 2


def test_downloads_that_break_off_do_not_give_the_host_up(endpoint, tiny_models, monkeypatch):
    """Found by the soak (benchmarks/soak.py): a resumed job's list is mostly the models that
    failed before, and downloads cut halfway, one after another, gave up a host that answered
    every request; the models after them then failed as "not tried"."""
    monkeypatch.setenv("JAXMAP_HUB_RETRIES", "0")
    fake = FakeHub()
    cut = [f"acme/cut{i}" for i in range(hub.UNREACHABLE_AFTER + 1)]
    for reference in [*cut, "acme/good"]:
        fake.add(reference, tiny_models[0])
    for reference in cut:
        fake.broken[(reference, WEIGHTS)] = "cut"
    server, host = _serve(HubHandler, fake)
    endpoint(f"http://{host}")
    try:
        checkpoints = [resolve(r) for r in [*cut, "acme/good"]]  # validation: every API call answered
        for checkpoint in checkpoints[:-1]:
            with pytest.raises(HubError) as caught:
                checkpoint.fetch_weights()
            assert str(caught.value).startswith(
                f"{checkpoint.reference}: download from {host} broke off: {WEIGHTS}: "
            ) and str(caught.value).endswith("(1 try)")
        assert [p.name for p in checkpoints[-1].fetch_weights()] == [WEIGHTS]
    finally:
        server.shutdown()
        server.server_close()


def test_rate_settings_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("JAXMAP_HUB_MIN_RATE", raising=False)
    monkeypatch.delenv("JAXMAP_HUB_RATE_WINDOW", raising=False)
    assert hub.rate_settings() == (hub.DEFAULT_MIN_RATE, hub.DEFAULT_RATE_WINDOW)
    monkeypatch.setenv("JAXMAP_HUB_MIN_RATE", "0")
    assert hub.rate_settings()[0] == 0
    monkeypatch.setenv("JAXMAP_HUB_RATE_WINDOW", "0")
    with pytest.raises(JaxmapError, match=r"^JAXMAP_HUB_RATE_WINDOW=0: expected a positive number of seconds$"):
        hub.rate_settings()
