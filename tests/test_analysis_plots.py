"""Rendering the map and the resampling curve (checked for content, not pixel by pixel).

Run with ``--basetemp DIR`` to keep the PNGs and look at them.
"""

from __future__ import annotations

import html
import json
import warnings

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from jaxmap.analysis import (
    AnalysisError,
    clip,
    double_center,
    map_html,
    plot_map,
    plot_resampling_curve,
    project,
    resampling_curve,
)

TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]


@pytest.fixture(scope="module")
def family_map():
    rng = np.random.default_rng(0)
    texts = 300
    difficulty = -rng.uniform(200, 1500, texts)
    rows, names, families = [], [], []
    for family in ("pythia", "llama", "qwen", "gemma"):
        base = difficulty + rng.lognormal(0, 1, texts) * rng.normal(0, 3, texts)
        for k in range(15):
            rows.append(base + rng.normal(0, 1, texts) * (0.5 + k / 10))
            names.append(f"{family}-{k}")
            families.append(family)
    return double_center(clip(np.array(rows))[0]), names, families


@pytest.fixture(scope="module")
def projections(family_map):
    Q, _, _ = family_map
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # 60 models: perplexity 30 is lowered (tested below)
        return {method: project(Q, method, seed=0) for method in ("tsne", "pca", "mds")}


def fraction_near(image: np.ndarray, colour: str, tolerance: float = 0.04) -> float:
    return float(
        np.mean(np.all(np.abs(image[..., :3] - np.array(to_rgb(colour))) < tolerance, axis=-1))
    )


@pytest.mark.parametrize("method", ["tsne", "pca", "mds"])
def test_map_png_shows_every_family(family_map, projections, tmp_path, method):
    _, names, families = family_map
    coordinates = projections[method]
    assert coordinates.shape == (len(names), 2)
    path = tmp_path / f"map_{method}.png"
    plot_map(
        coordinates, names, path, color_values=families, color_label="family", axis_label=method
    )
    image = imread(path)
    assert image.shape[:2] == (1125, 1500)
    assert 0.5 < float(np.mean(image[..., :3] > 0.95)) < 0.995  # mostly background, not blank
    for colour in TAB10:  # every family's points (and legend marker) are drawn in its colour
        assert fraction_near(image, colour) > 1e-4


def test_tsne_groups_families(family_map, projections):
    _, _, families = family_map
    coordinates = projections["tsne"]
    labels = np.array(families)
    distances = np.linalg.norm(coordinates[:, None] - coordinates[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert np.mean(labels[distances.argmin(axis=1)] == labels) > 0.9


def test_small_maps_lower_the_perplexity_and_label_points(family_map, tmp_path):
    Q, names, families = family_map
    with pytest.warns(UserWarning, match="perplexity lowered"):
        coordinates = project(Q[:12], "tsne")
    sizes = {float(i): i for i in range(12)}
    plot_map(
        coordinates,
        names[:12],
        tmp_path / "small.png",
        color_values=[f"{v:g}" for v in sizes],
        color_label="step",
    )
    assert imread(tmp_path / "small.png").shape[:2] == (1125, 1500)
    with pytest.raises(AnalysisError, match="at least 3 models"):
        project(Q[:2], "pca")


def test_numeric_colours_and_html(family_map, projections, tmp_path):
    _, names, _ = family_map
    coordinates = projections["pca"]
    parameters = [f"{10 ** (7 + 3 * i / len(names)):.4g}" for i in range(len(names))]
    plot_map(
        coordinates,
        names,
        tmp_path / "numeric.png",
        color_values=parameters,
        color_label="parameters",
    )
    image = imread(tmp_path / "numeric.png")
    assert (
        fraction_near(image, "#440154", 0.08) > 1e-5
        and fraction_near(image, "#fde725", 0.08) > 1e-5
    )
    odd_names = ['<script>alert("x")</script>'] + names[1:]
    metadata = [{"parameters": p, "note": "a & b"} for p in parameters]
    map_html(coordinates, odd_names, tmp_path / "map.html", metadata=metadata, color_by="parameters")
    page = (tmp_path / "map.html").read_text()
    assert "<script>alert" not in page  # a name cannot end the data's script element
    data = json.loads(page.split('<script type="application/json" id="map-data">', 1)[1].split("</script>", 1)[0])
    assert data["names"] == odd_names
    assert data["hover"][0].startswith('<b>&lt;script&gt;alert("x")&lt;/script&gt;</b>')
    assert "note: a &amp; b" in data["hover"][0]
    assert data["colorings"]["parameters"]["kind"] == "numeric" and data["colorings"]["parameters"]["log"]
    assert "note" not in data["colorings"]  # one value for every model tells nothing apart
    assert "<script src" not in page and "<link" not in page  # plotly.js is in the page
    with pytest.raises(AnalysisError, match="no such metadata column"):
        map_html(coordinates, names, tmp_path / "x.html", metadata=metadata, color_by="family")
    with pytest.raises(AnalysisError, match="3 colour values for 60 models"):
        plot_map(coordinates, names, tmp_path / "x.png", color_values=["a", "b", "c"])


def test_resampling_curve_png(family_map, tmp_path):
    Q, _, _ = family_map
    curve = resampling_curve(Q, [20, 60, 180], seeds=range(4))
    assert set(curve.errors) == {"ls", "kl", "uniform"} and curve.errors["ls"].shape == (3, 4)
    path = tmp_path / "curve.png"
    plot_resampling_curve(curve, path)
    image = imread(path)
    assert image.shape[:2] == (825, 1125)
    for colour in TAB10[:3]:  # one line per method
        assert fraction_near(image, colour) > 1e-4


def test_a_crowded_map_names_a_subset_without_overlaps(tmp_path):
    rng = np.random.default_rng(0)
    centres = [(0, 0), (6, 1), (2, 7), (-5, 4)]
    coordinates = np.concatenate([rng.normal(size=(300, 2)) + c for c in centres])
    names = [f"family{i // 300}/model-{i:04d}-step{i * 7}" for i in range(1200)]
    families = [f"family{i // 300}" for i in range(1200)]
    path = tmp_path / "crowded.png"
    figure = plot_map(coordinates, names, path, color_values=families, color_label="family", label_count=40)
    assert imread(path).shape[:2] == (1125, 1500)
    axes = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    labels = [text for text in axes.texts if text.get_text()]
    assert 25 <= len(labels) <= 40 and {t.get_text() for t in labels} <= set(names)
    boxes = [text.get_window_extent(renderer) for text in labels]
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    overlapping = [(a, b) for i, a in enumerate(boxes) for b in boxes[:i] if a.overlaps(b)]
    assert not overlapping
    # Chosen names: only those, each written once.
    chosen = [names[5], names[700], names[1199]]
    figure = plot_map(coordinates, names, tmp_path / "chosen.png", labels=chosen)
    assert sorted(t.get_text() for t in figure.axes[0].texts if t.get_text()) == sorted(chosen)
    with pytest.raises(AnalysisError, match="no such model"):
        plot_map(coordinates, names, tmp_path / "x.png", labels=["nobody"])


def test_markup_in_the_data_never_reaches_the_page_as_markup(tmp_path):
    link = '<a href="https://evil.example/" target="_top">x</a>'
    script = "<script>alert(1)</script>"
    names = [link, script, "plain", "other"]
    metadata = [{"family": link, "note": script}, {"family": script}, {"family": "a"}, {}]
    coordinates = np.arange(8, dtype=float).reshape(4, 2) ** 2
    map_html(
        coordinates, names, tmp_path / "map.html", metadata=metadata, title=link, axis_label=script,
        display_names=[script, link, "p", "o"],
    )
    page = (tmp_path / "map.html").read_text()
    assert '<a href="https://evil' not in page and "<script>alert" not in page
    assert f"<title>{html.escape(link)}</title>" in page
    data = json.loads(page.split('<script type="application/json" id="map-data">', 1)[1].split("</script>", 1)[0])
    # The page's script gets the strings as they are (plotly is handed them escaped, the side
    # panel sets them as text); the hover, markup by design, has them escaped.
    assert data["names"] == [script, link, "p", "o"] and data["references"] == names
    assert data["hover"][0].startswith(f"<b>{html.escape(script, quote=False)}</b><br>{html.escape(link, quote=False)}<br>")
    assert "<" not in data["hover"][1].replace("<b>", "").replace("</b>", "").replace("<br>", "")
