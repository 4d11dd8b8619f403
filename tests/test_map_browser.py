"""The interactive map in a real headless browser (Debian's chromium, driven through the
DevTools protocol over a pipe: no driver, no extra package): points render, a real mouse move
onto a point shows its name and metadata, the colour menu, the search box, the neighbour list
of a clicked model, and the trajectory lines.

scripts/test.sh installs chromium with apt-get where it can; without a browser these tests are
skipped, saying so. ``JAXMAP_TEST_BROWSER`` names another Chromium-family executable.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from jaxmap.analysis.plots import map_html

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    named = os.environ.get("JAXMAP_TEST_BROWSER")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


class Browser:
    """A headless Chromium speaking the DevTools protocol over ``--remote-debugging-pipe``:
    commands are JSON messages ending in NUL on the browser's fd 3, answers and events come
    back on its fd 4."""

    def __init__(self, executable: str, profile: Path, width: int = 1400, height: int = 900):
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()

        def wire() -> None:
            os.dup2(commands_read, 3)
            os.dup2(answers_write, 4)

        arguments = [
            executable, "--headless=new", "--remote-debugging-pipe", "--disable-gpu",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            f"--user-data-dir={profile}", f"--window-size={width},{height}",
        ]
        if os.geteuid() == 0:
            arguments.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
        self.process = subprocess.Popen(
            arguments, preexec_fn=wire, pass_fds=(3, 4),  # the numbers wire() gives them
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(answers_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Page.enable", session=True)
        self.send(
            "Emulation.setDeviceMetricsOverride", session=True,
            width=width, height=height, deviceScaleFactor=1, mobile=False,
        )

    def _message(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("the browser did not answer")
            import select

            ready, _, _ = select.select([self._answers], [], [], 0.5)
            if ready:
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    raise RuntimeError("the browser closed its DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: bool = False, timeout: float = 60.0, **params) -> dict:
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params}
        if session:
            command["sessionId"] = self.session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        while True:
            message = self._message(timeout)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.send(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"never true in the page: {expression}")

    def open(self, path: Path) -> None:
        self.send("Page.navigate", session=True, url=path.resolve().as_uri())
        self.wait_for("document.readyState === 'complete' && document.body.dataset.ready === 'yes'")

    def mouse(self, kind: str, x: float, y: float) -> None:
        self.send(
            "Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y,
            button="left" if kind != "mouseMoved" else "none", clickCount=1 if kind != "mouseMoved" else 0,
        )

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._answers)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = find_browser()
    if executable is None:
        pytest.skip(
            "no Chromium-family browser found (scripts/test.sh installs Debian's chromium with "
            "apt-get when run as root; or set JAXMAP_TEST_BROWSER)"
        )
    try:
        opened = Browser(executable, tmp_path_factory.mktemp("browser-profile"))
    except (OSError, RuntimeError, TimeoutError) as error:
        pytest.skip(f"{executable} does not start headless here: {error}")
    yield opened
    opened.close()


# Point centres in page pixels, and the models they belong to, read from plotly's SVG.
POINTS = """
[...document.querySelectorAll('.scatterlayer .trace')].flatMap(trace =>
  [...trace.querySelectorAll('path.point')].map(point => {
    const box = point.getBoundingClientRect();
    return {x: box.x + box.width / 2, y: box.y + box.height / 2, index: point.__data__.data};
  }))
"""


@pytest.fixture(scope="module")
def demo_like_map(tmp_path_factory):
    """A map as the demo writes one, plus a checkpoint run and logit-lens rows."""
    rng = np.random.default_rng(0)
    names = ["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]
    metadata = [
        {"architecture": "LlamaForCausalLM", "family": "smollm", "parameters": "1.35e8"},
        {"architecture": "Gemma3ForCausalLM", "family": "gemma", "parameters": "2.7e8"},
        {"architecture": "Qwen2ForCausalLM", "family": "qwen", "parameters": "4.9e8"},
    ]
    for step in range(4):
        names.append(f"run-a@step{step * 1000}")
        metadata.append({"family": "run-a", "run": "run-a", "step": str(step * 1000)})
    for layer in range(3):
        names.append(f"gemma3-270m@layer{layer}")
        metadata.append({"parent_model": "gemma3-270m", "layer": layer, "num_layers": 3})
    coordinates = rng.normal(size=(len(names), 2)) * 4
    kl = np.linalg.norm(coordinates[:, None] - coordinates[None], axis=-1) ** 2
    path = tmp_path_factory.mktemp("map") / "map.html"
    map_html(coordinates, names, path, metadata=metadata, color_by="family", kl=kl, title="demo map")
    return path, names, metadata, kl


def test_points_render_and_hover_shows_the_name(browser, demo_like_map):
    path, names, metadata, _ = demo_like_map
    browser.open(path)
    points = browser.evaluate(POINTS)
    assert sorted(p["index"] for p in points) == list(range(len(names)))
    # A real mouse move onto each of a few points: plotly's hover label names that model and
    # shows its metadata.
    for target in (0, 1, 4):
        point = next(p for p in points if p["index"] == target)
        browser.mouse("mouseMoved", point["x"], point["y"])
        label = browser.wait_for(
            "(document.querySelector('.hoverlayer .hovertext') || {}).textContent", timeout=10
        )
        assert names[target] in label
        for key, value in metadata[target].items():
            assert f"{key}: {value}" in label
        browser.mouse("mouseMoved", 2, 2)  # away, so the next label is a new one
        browser.wait_for("!document.querySelector('.hoverlayer .hovertext')", timeout=10)


def test_colour_menu_switches_the_legend(browser, demo_like_map):
    path, names, metadata, _ = demo_like_map
    browser.open(path)
    legend = "[...document.querySelectorAll('.legend .traces .legendtext')].map(t => t.textContent)"
    families = {row["family"] for row in metadata if "family" in row}
    assert families | {"(missing)", "trajectories"} >= set(browser.evaluate(legend)) >= families
    options = browser.evaluate("[...document.getElementById('color-by').options].map(o => o.value)")
    assert {"family", "architecture", "parameters", "layer"} <= set(options)
    browser.evaluate(
        "{ const s = document.getElementById('color-by'); s.value = 'architecture';"
        "s.dispatchEvent(new Event('change')); }"
    )
    shown = browser.wait_for(f"(() => {{ const l = {legend}; return l.includes('Qwen2ForCausalLM') && l; }})()")
    assert "smollm" not in shown and "Gemma3ForCausalLM" in shown


def test_search_highlights_and_click_lists_neighbours(browser, demo_like_map):
    path, names, _, kl = demo_like_map
    browser.open(path)
    browser.evaluate(
        "{ const q = document.getElementById('search'); q.value = 'layer';"
        "q.dispatchEvent(new Event('input')); }"
    )
    found = sum("layer" in name for name in names)
    assert browser.wait_for("document.getElementById('matches').textContent") == f"{found} of {len(names)} models match"
    rings = browser.evaluate(
        "[...document.querySelectorAll('.scatterlayer .trace')].filter(t => t.__data__[0].trace.meta === 'ring')"
        ".map(t => t.querySelectorAll('path.point').length)"
    )
    assert rings == [found]
    browser.evaluate(
        "{ const q = document.getElementById('search'); q.value = ''; q.dispatchEvent(new Event('input')); }"
    )
    points = browser.evaluate(POINTS)
    point = next(p for p in points if p["index"] == 2)
    browser.mouse("mouseMoved", point["x"], point["y"])
    browser.mouse("mousePressed", point["x"], point["y"])
    browser.mouse("mouseReleased", point["x"], point["y"])
    listed = browser.wait_for(
        "[...document.querySelectorAll('#neighbors li')].map(li => li.textContent)", timeout=10
    )
    others = np.where(np.arange(len(names)) == 2, np.inf, kl[2])
    expected = [names[j] for j in np.argsort(others, kind="stable")[: len(listed)]]
    assert [item.rsplit(" (", 1)[0] for item in listed] == expected and len(listed) == len(names) - 1
    assert names[2] in browser.evaluate("document.getElementById('picked').textContent")


def test_trajectories_are_drawn_in_order(browser, demo_like_map):
    path, names, _, _ = demo_like_map
    browser.open(path)
    paths = browser.evaluate("JSON.parse(document.getElementById('map-data').textContent).paths")
    run = [names.index(f"run-a@step{s * 1000}") for s in range(4)]
    lens = [names.index(f"gemma3-270m@layer{i}") for i in range(3)] + [names.index("gemma3-270m")]
    assert sorted(paths) == sorted([run, lens])
    drawn = browser.evaluate(
        "[...document.querySelectorAll('.scatterlayer .trace')].filter(t => t.__data__[0].trace.meta === 'paths')"
        ".flatMap(t => [...t.querySelectorAll('path.js-line')].map(line => line.getAttribute('d')))"
    )
    # One line trace, drawn as one SVG line per trajectory through its 4 points.
    assert len(drawn) == 2 and [line.count("L") for line in drawn] == [3, 3]


EVIL_LINK = '<a href="https://evil.example/" target="_top">x</a>'
EVIL_SCRIPT = '<script>document.body.dataset.owned = "yes"</script>'
# Every anchor in the page (HTML or SVG) whose link goes to the data's address.
EVIL_ANCHORS = """
[...document.querySelectorAll('a')].filter(a =>
  [a.getAttribute('href'), a.getAttributeNS('http://www.w3.org/1999/xlink', 'href')]
    .some(h => h && h.includes('evil.example'))).length
"""


@pytest.fixture(scope="module")
def hostile_map(tmp_path_factory):
    """Markup in model names, metadata values and column names, the title and the axis label;
    no colour column asked for."""
    names = ["plain-0", EVIL_LINK, EVIL_SCRIPT] + [f"plain-{i}" for i in range(3, 14)]
    # 14 distinct sizes: a numeric column, whose name titles the colour bar.
    metadata = [
        {"family": EVIL_LINK if i % 2 else "plain", "<b>size</b>": str(i + 1)} for i in range(len(names))
    ]
    coordinates = np.random.default_rng(1).normal(size=(len(names), 2)) * 4
    kl = np.linalg.norm(coordinates[:, None] - coordinates[None], axis=-1) ** 2
    path = tmp_path_factory.mktemp("hostile") / "map.html"
    map_html(coordinates, names, path, metadata=metadata, kl=kl, title=EVIL_LINK, axis_label=EVIL_LINK)
    return path, names


def test_markup_in_names_and_metadata_stays_text(browser, hostile_map):
    path, names = hostile_map
    browser.open(path)
    # Coloured by a group column from the start, not "(none)".
    assert browser.evaluate("document.getElementById('color-by').value") == "family"
    legend = browser.evaluate(
        "[...document.querySelectorAll('.legend .traces .legendtext')].map(t => t.textContent)"
    )
    assert EVIL_LINK in legend
    # A small map writes every name beside its point, as text.
    labels = browser.evaluate("[...document.querySelectorAll('.scatterlayer .textpoint')].map(t => t.textContent)")
    assert sorted(labels) == sorted(names)
    axis = browser.evaluate("document.querySelector('.xtitle').textContent")
    assert axis == EVIL_LINK + " 1" and browser.evaluate("document.title") == EVIL_LINK
    # Hovering the model named with a link shows its name as typed; picking it rings it and
    # lists its neighbours, all as text.
    point = next(p for p in browser.evaluate(POINTS) if p["index"] == 1)
    browser.mouse("mouseMoved", point["x"], point["y"])
    label = browser.wait_for("(document.querySelector('.hoverlayer .hovertext') || {}).textContent", timeout=10)
    assert label.startswith(EVIL_LINK) and f"family: {EVIL_LINK}" in label
    browser.mouse("mousePressed", point["x"], point["y"])
    browser.mouse("mouseReleased", point["x"], point["y"])
    listed = browser.wait_for("[...document.querySelectorAll('#neighbors li')].map(li => li.textContent)", timeout=10)
    assert any(item.startswith(EVIL_SCRIPT) for item in listed)
    assert browser.wait_for(
        "[...document.querySelectorAll('.legend .traces .legendtext')].map(t => t.textContent)"
        f".includes({json.dumps('nearest to ' + EVIL_LINK)})",
        timeout=10,
    )
    assert browser.evaluate(EVIL_ANCHORS) == 0
    browser.evaluate(
        "{ const s = document.getElementById('color-by'); s.value = '<b>size</b>';"
        "s.dispatchEvent(new Event('change')); }"
    )
    assert browser.wait_for("(document.querySelector('.cbtitle') || {}).textContent") == "<b>size</b>"
    assert browser.evaluate("document.body.dataset.owned") is None
