"""Pictures for people: the model map (PNG and offline HTML) and the resampling curve (PNG).

Figures are drawn on ``matplotlib.figure.Figure`` objects directly, so nothing here touches
pyplot's global state or the caller's backend.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..errors import OutputError
from ..outputs import atomic_output
from ._arrays import AnalysisError
from .resampling import ResamplingCurve

MISSING = "(missing)"
_MAX_CATEGORIES = 20  # beyond this a legend stops being readable; the rest become "other"
_NUMERIC_MIN_DISTINCT = 13  # fewer distinct numbers read better as categories (e.g. sizes)
_GREY = "#b0b0b0"


@dataclass(frozen=True)
class _Coloring:
    point_colors: list[str]
    legend: list[tuple[str, str]]  # (label, colour) for categories
    norm: Normalize | None  # for a numeric colour bar
    point_labels: list[str]  # the value shown for each point


def _parse_number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _coloring(values: Sequence | None, count: int) -> _Coloring:
    if values is None:
        return _Coloring(["#1f77b4"] * count, [], None, [""] * count)
    if len(values) != count:
        raise AnalysisError(f"{len(values)} colour values for {count} models")
    missing = [v is None or (isinstance(v, str) and not v.strip()) for v in values]
    numbers = [None if gone else _parse_number(v) for v, gone in zip(values, missing)]
    present = [n for n, gone in zip(numbers, missing) if not gone]
    if (
        present
        and all(n is not None for n in present)
        and len(set(present)) >= _NUMERIC_MIN_DISTINCT
    ):
        low, high = min(present), max(present)
        # Positive values spanning decades (parameters, tokens seen) read better on a log scale.
        norm = (
            LogNorm(low, high)
            if low > 0 and high / low > 100
            else Normalize(low, high if high > low else low + 1)
        )
        cmap = colormaps["viridis"]
        colors = [_GREY if n is None else to_hex(cmap(norm(n))) for n in numbers]
        labels = [MISSING if n is None else f"{n:g}" for n in numbers]
        return _Coloring(colors, [(MISSING, _GREY)] if any(missing) else [], norm, labels)
    labels = [MISSING if gone else str(v) for v, gone in zip(values, missing)]
    ranked = [label for label, _ in Counter(l for l in labels if l != MISSING).most_common()]
    if len(ranked) > _MAX_CATEGORIES:
        kept = set(ranked[: _MAX_CATEGORIES - 1])
        labels = [l if l in kept or l == MISSING else "other" for l in labels]
        ranked = ranked[: _MAX_CATEGORIES - 1] + ["other"]
    palette = colormaps["tab10" if len(ranked) <= 10 else "tab20"]
    colour_of = {label: to_hex(palette(i)) for i, label in enumerate(ranked)}
    colour_of[MISSING] = _GREY
    legend = [(label, colour_of[label]) for label in ranked] + (
        [(MISSING, _GREY)] if any(missing) else []
    )
    return _Coloring([colour_of[l] for l in labels], legend, None, labels)


def image_format(path: str | Path) -> str:
    """The image format matplotlib writes for ``path``, from its suffix (``map.png``: png).

    Raises :class:`~jaxmap.errors.OutputError` naming the path when the suffix is missing or
    matplotlib cannot write it, so a command can refuse it before any work.
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    supported = Figure().canvas.get_supported_filetypes()
    if suffix not in supported:
        problem = f"cannot write .{suffix} images" if suffix else "no suffix to say the image format"
        raise OutputError(
            f"{path}: {problem}; use one of " + ", ".join(f".{name}" for name in sorted(supported))
        )
    return suffix


def _save(figure: Figure, path: str | Path) -> None:
    image = image_format(path)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format=image)


def _check_coordinates(coordinates, names: Sequence[str]) -> np.ndarray:
    coordinates = np.asarray(coordinates, dtype=np.float64)
    if coordinates.ndim != 2 or coordinates.shape[1] != 2:
        raise AnalysisError(f"map coordinates must be K×2, got shape {coordinates.shape}")
    if len(names) != coordinates.shape[0]:
        raise AnalysisError(f"{len(names)} names for {coordinates.shape[0]} points")
    return coordinates


def plot_map(
    coordinates,
    names: Sequence[str],
    path: str | Path,
    *,
    color_values: Sequence | None = None,
    color_label: str = "",
    axis_label: str = "t-SNE",
    title: str = "Model map",
    annotate: bool | None = None,
) -> None:
    """Save the map as an image in the format of ``path``'s suffix (.png, .svg, .pdf ...),
    written atomically: one point per model, coloured by ``color_values`` if given.

    Categorical values get a legend, numeric ones (13 or more distinct) a colour bar.
    ``annotate`` writes the model names beside the points (default: when there are at most
    40 models, beyond which names overlap into noise).
    """
    coordinates = _check_coordinates(coordinates, names)
    count = len(names)
    coloring = _coloring(color_values, count)
    annotate = count <= 40 if annotate is None else annotate
    figure = Figure(figsize=(10, 7.5), dpi=150, layout="constrained")
    axes = figure.add_subplot()
    marker_size = float(np.clip(4000 / count, 6, 60))
    axes.scatter(
        coordinates[:, 0],
        coordinates[:, 1],
        s=marker_size,
        c=coloring.point_colors,
        edgecolors="white",
        linewidths=0.4,
        alpha=0.9,
    )
    # Distances are what the map shows, so one unit must be as long on both axes; the margins
    # leave room for the names written beside the outermost points.
    axes.set_aspect("equal", adjustable="datalim")
    axes.margins(0.12)
    if annotate:
        for (x, y), name in zip(coordinates, names):
            axes.annotate(
                name, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7, color="#333333"
            )
    if coloring.norm is not None:
        mappable = axes.scatter([], [], c=[], cmap="viridis", norm=coloring.norm)
        figure.colorbar(mappable, ax=axes, label=color_label)
    if coloring.legend:
        handles = [
            axes.scatter([], [], s=40, color=colour, label=label)
            for label, colour in coloring.legend
        ]
        axes.legend(
            handles=handles,
            title=color_label or None,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            fontsize=8,
            title_fontsize=9,
        )
    axes.margins(0.08)  # room for the names of the outermost points
    axes.set_xlabel(f"{axis_label} 1")
    axes.set_ylabel(f"{axis_label} 2")
    axes.set_title(title)
    axes.grid(True, color="#eeeeee", linewidth=0.6)
    axes.set_axisbelow(True)
    _save(figure, path)


_TOOLTIP_SCRIPT = """
const tip = document.getElementById('tip');
document.querySelectorAll('circle[data-name]').forEach(c => {
  c.addEventListener('mouseenter', () => {
    tip.textContent = c.dataset.name;
    tip.style.display = 'block';
  });
  c.addEventListener('mousemove', e => {
    tip.style.left = (e.pageX + 12) + 'px';
    tip.style.top = (e.pageY + 12) + 'px';
  });
  c.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
});
"""


def map_html(
    coordinates,
    names: Sequence[str],
    path: str | Path,
    *,
    color_values: Sequence | None = None,
    color_label: str = "",
    title: str = "Model map",
) -> None:
    """Save the map as one self-contained HTML file (inline SVG and script, no network),
    written atomically.

    Hovering a point shows the model's name (and its colour value); the SVG ``<title>`` of
    each point shows the same where scripts are disabled.
    """
    coordinates = _check_coordinates(coordinates, names)
    coloring = _coloring(color_values, len(names))
    width, height, margin = 900, 700, 30
    legend_width = 240 if coloring.legend or coloring.norm is not None else 0
    low, high = coordinates.min(axis=0), coordinates.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    plot_w, plot_h = width - 2 * margin, height - 2 * margin
    xs = margin + (coordinates[:, 0] - low[0]) / span[0] * plot_w
    ys = height - margin - (coordinates[:, 1] - low[1]) / span[1] * plot_h
    radius = float(np.clip(300 / np.sqrt(len(names)), 2.5, 7))
    points = []
    for x, y, name, colour, value in zip(
        xs, ys, names, coloring.point_colors, coloring.point_labels
    ):
        label = f"{name} — {color_label or 'value'}: {value}" if color_values is not None else name
        safe = html.escape(label, quote=True)
        points.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" fill="{colour}" '
            f'data-name="{safe}">'
            f"<title>{safe}</title></circle>"
        )
    legend = []
    entries = list(coloring.legend)
    if coloring.norm is not None:
        steps = np.linspace(0.0, 1.0, 5)
        entries = [
            (
                f"{color_label or 'value'} {coloring.norm.inverse(f):.3g}",
                to_hex(colormaps["viridis"](f)),
            )
            for f in steps
        ] + entries
    if entries:
        legend.append(
            f'<text x="{width + 10}" y="{margin}" font-weight="bold">'
            f"{html.escape(color_label)}</text>"
        )
        for row, (label, colour) in enumerate(entries):
            y = margin + 20 + 18 * row
            legend.append(
                f'<circle cx="{width + 16}" cy="{y - 4}" r="5" fill="{colour}"></circle>'
                f'<text x="{width + 28}" y="{y}">{html.escape(label)}</text>'
            )
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; }}
svg {{ font-size: 12px; }}
circle[data-name] {{ stroke: white; stroke-width: 0.6; opacity: 0.9; }}
circle[data-name]:hover {{ stroke: black; stroke-width: 1.5; opacity: 1; }}
#tip {{ position: absolute; display: none; background: #222; color: #fff; padding: 3px 6px;
        border-radius: 3px; font-size: 12px; pointer-events: none; }}
</style></head><body>
<h3>{html.escape(title)}</h3>
<svg xmlns="http://www.w3.org/2000/svg" width="{width + legend_width}" height="{height}">
<rect x="0" y="0" width="{width}" height="{height}" fill="white" stroke="#dddddd"></rect>
{chr(10).join(points)}
{chr(10).join(legend)}
</svg>
<div id="tip"></div>
<script>{_TOOLTIP_SCRIPT}</script>
</body></html>
"""
    with atomic_output(path) as temporary:
        temporary.write_text(document, encoding="utf-8")


_METHOD_LABELS = {"ls": "LS (likelihood variance)", "kl": "KL", "uniform": "uniform"}


def plot_resampling_curve(curve: ResamplingCurve, path: str | Path, *, title: str = "") -> None:
    """Save the error-versus-n curve (mean ± sd over seeds, log-log axes) as an image in the
    format of ``path``'s suffix, written atomically."""
    figure = Figure(figsize=(7.5, 5.5), dpi=150, layout="constrained")
    axes = figure.add_subplot()
    for method in curve.errors:
        mean, sd = curve.mean(method), curve.sd(method)
        axes.plot(
            curve.sizes, mean, marker="o", markersize=4, label=_METHOD_LABELS.get(method, method)
        )
        axes.fill_between(curve.sizes, np.maximum(mean - sd, mean * 0.05), mean + sd, alpha=0.2)
    axes.set_xscale("log")
    axes.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes.set_xticks(curve.sizes)
    axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("n (texts drawn)")
    axes.set_ylabel("relative Frobenius error of pairwise squared distances")
    axes.set_title(title or f"Resampling error over {len(curve.seeds)} seeds")
    axes.grid(True, which="both", color="#eeeeee", linewidth=0.6)
    axes.legend(frameon=False)
    _save(figure, path)
