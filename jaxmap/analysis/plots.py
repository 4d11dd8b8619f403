"""Pictures for people: the model map (PNG, and interactive offline HTML with plotly), the
resampling curve, trajectories on the map, the model tree as a dendrogram and the maximum
spanning tree of the independent axes.

Figures are drawn on ``matplotlib.figure.Figure`` objects directly, so nothing here touches
pyplot's global state or the caller's backend. Every file is written atomically.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..errors import OutputError
from ..outputs import atomic_output
from ._arrays import AnalysisError
from .resampling import ResamplingCurve

if TYPE_CHECKING:  # for the annotations only: importing .ica loads scipy's graph routines
    from .ica import ICAResult
    from .tree import TreeNode

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


def distinct_points(coordinates, count: int) -> list[int]:
    """``count`` points spread over the map (farthest-point traversal): the first is the one
    farthest from the centre, each next the one farthest from those chosen. These are the
    models a crowded map names."""
    coordinates = np.asarray(coordinates, dtype=np.float64)
    count = min(count, len(coordinates))
    if count <= 0:
        return []
    chosen = [int(np.argmax(np.linalg.norm(coordinates - coordinates.mean(axis=0), axis=1)))]
    nearest = np.linalg.norm(coordinates - coordinates[chosen[0]], axis=1)
    while len(chosen) < count:
        following = int(np.argmax(nearest))
        if nearest[following] == 0:  # only duplicates of chosen points are left
            break
        chosen.append(following)
        nearest = np.minimum(nearest, np.linalg.norm(coordinates - coordinates[following], axis=1))
    return chosen


# Where a label may sit around its point, as (dx, dy) directions; tried at growing distances.
_LABEL_DIRECTIONS = [(1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
_LABEL_GAP = 2.0  # display pixels kept between two labels


def _place_labels(axes, figure, coordinates: np.ndarray, names: Sequence[str], chosen: list[int]):
    """Write the names of ``chosen`` points where they overlap no other label and stay inside
    the axes, preferring spots near the point that cover few other points (greedy, in the
    order given). Returns how many names found no place."""
    renderer = figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    points = axes.transData.transform(coordinates)
    placed: list[np.ndarray] = []  # [x0, y0, x1, y1] of every label written, in pixels
    unplaced = 0
    scale = figure.dpi / 72.0
    for index in chosen:
        text = axes.text(0, 0, names[index], fontsize=7, color="#333333", ha="center", va="center")
        extent = text.get_window_extent(renderer)
        half = np.array([extent.width, extent.height]) / 2 + _LABEL_GAP
        best = None
        for step, distance in enumerate((6, 14, 26, 44)):
            for dx, dy in _LABEL_DIRECTIONS:
                centre = points[index] + np.array(
                    [dx * (distance * scale + half[0] - _LABEL_GAP), dy * (distance * scale + half[1] - _LABEL_GAP)]
                )
                box = np.concatenate([centre - half, centre + half])
                if box[0] < frame.x0 or box[1] < frame.y0 or box[2] > frame.x1 or box[3] > frame.y1:
                    continue
                if any(
                    box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]
                    for other in placed
                ):
                    continue
                covered = int(
                    np.sum(
                        (points[:, 0] > box[0]) & (points[:, 0] < box[2])
                        & (points[:, 1] > box[1]) & (points[:, 1] < box[3])
                    )
                )
                cost = 3 * covered + step
                if best is None or cost < best[0]:
                    best = (cost, centre, box, step)
            if best is not None and best[0] <= step:  # nothing covered: no farther spot is better
                break
        if best is None:
            text.remove()
            unplaced += 1
            continue
        _, centre, box, step = best
        text.set_position(axes.transData.inverted().transform(centre))
        placed.append(box)
        if step >= 2:  # far from its point: a leader line says whose name it is
            edge = np.clip(points[index], box[:2], box[2:])  # the label's nearest point
            axes.annotate(
                "", xy=coordinates[index], xytext=axes.transData.inverted().transform(edge),
                arrowprops=dict(arrowstyle="-", color="#999999", linewidth=0.5, shrinkA=0, shrinkB=2),
            )
    return unplaced


def plot_map(
    coordinates,
    names: Sequence[str],
    path: str | Path,
    *,
    color_values: Sequence | None = None,
    color_label: str = "",
    axis_label: str = "t-SNE",
    title: str = "Model map",
    labels: Sequence[str] | None = None,
    label_count: int = 30,
) -> Figure:
    """Save the map as an image in the format of ``path``'s suffix (.png, .svg, .pdf ...),
    written atomically: one point per model, coloured by ``color_values`` if given. Returns
    the figure.

    Categorical values get a legend, numeric ones (13 or more distinct) a colour bar. Names are
    written for the models in ``labels``, else for ``label_count`` models spread over the map
    (:func:`distinct_points`; all of them when there are no more), placed so that no two
    overlap and none leaves the axes; a name that finds no such place is left out.
    """
    coordinates = _check_coordinates(coordinates, names)
    count = len(names)
    coloring = _coloring(color_values, count)
    if labels is not None:
        index_of = {name: i for i, name in enumerate(names)}
        unknown = [name for name in labels if name not in index_of]
        if unknown:
            raise AnalysisError(f"cannot label {unknown[0]!r}: no such model on the map")
        chosen = list(dict.fromkeys(index_of[name] for name in labels))
    else:
        chosen = distinct_points(coordinates, label_count)
    figure = Figure(figsize=(10, 7.5), dpi=150, layout="constrained")
    axes = figure.add_subplot()
    marker_size = float(np.clip(4000 / count, 4, 60))
    axes.scatter(
        coordinates[:, 0],
        coordinates[:, 1],
        s=marker_size,
        c=coloring.point_colors,
        edgecolors="white",
        linewidths=0.4 if count <= 400 else 0.0,
        alpha=0.9,
    )
    # Distances are what the map shows, so one unit must be as long on both axes; the margins
    # leave room for the names written beside the outermost points.
    axes.set_aspect("equal", adjustable="datalim")
    axes.margins(0.08)
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
    axes.set_xlabel(f"{axis_label} 1")
    axes.set_ylabel(f"{axis_label} 2")
    axes.set_title(title)
    axes.grid(True, color="#eeeeee", linewidth=0.6)
    axes.set_axisbelow(True)
    if chosen:
        # Labels are placed in pixels: fix the layout and the limits first, so that drawing
        # the figure again (when saving) moves nothing.
        FigureCanvasAgg(figure).draw()
        figure.set_layout_engine("none")
        axes.set_xlim(axes.get_xlim())
        axes.set_ylim(axes.get_ylim())
        _place_labels(axes, figure, coordinates, names, chosen)
    _save(figure, path)
    return figure


def _metadata_columns(metadata: Sequence[Mapping[str, object]] | None, count: int) -> list[str]:
    if metadata is None:
        return []
    if len(metadata) != count:
        raise AnalysisError(f"{len(metadata)} metadata rows for {count} models")
    columns: dict[str, None] = {}
    for row in metadata:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _shown(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None else str(value)


def _as_text(value) -> str:
    """``value`` escaped for plotly's markup, which decodes ``&lt; &gt; &amp;`` but shows
    ``&quot;`` as typed: with ``<`` escaped no tag can form, so quotes need no escaping."""
    return html.escape(str(value), quote=False)


def _page_coloring(values: Sequence, count: int) -> dict | None:
    """How the page colours by one column; None for a column that cannot tell models apart."""
    coloring = _coloring(values, count)
    if coloring.norm is not None:
        numbers = [None if label == MISSING else float(label) for label in coloring.point_labels]
        return {
            "kind": "numeric",
            "values": [_parse_number(v) if n is not None else None for v, n in zip(values, numbers)],
            "log": isinstance(coloring.norm, LogNorm),
        }
    distinct = {label for label in coloring.point_labels}
    if len(distinct) < 2 or (len(distinct) == count and count > _MAX_CATEGORIES):
        return None  # one value for all, or a name per model (references, keys): no colouring
    colors = dict(coloring.legend)
    return {
        "kind": "category",
        "labels": coloring.point_labels,
        "colors": colors,
        "order": [label for label, _ in coloring.legend],
    }


def _numeric_order(value) -> tuple:
    number = _parse_number(value)
    return (0, number, "") if number is not None else (1, 0.0, str(value))


def trajectory_paths(
    names: Sequence[str], metadata: Sequence[Mapping[str, object]] | None
) -> list[list[int]]:
    """The trajectories drawn on the map, as lists of point indices in order.

    Logit-lens rows (metadata ``layer`` and ``parent_key``) make one thread per model, ordered
    by layer and ending at the model's own row (the row whose ``key`` is that parent key) when
    it is on the map: the rule of :func:`jaxmap.row_metadata.logit_lens_threads`, so that two
    spellings of one model are one thread. Rows from stores that predate ``parent_key`` are
    threaded by ``parent_model``, the model's name. Models whose metadata has a
    ``trajectory``, ``run`` or ``path`` value and a ``step`` make one path per value, ordered by
    step. A thread of one point is no path.
    """
    if metadata is None:
        return []
    index_of = {name: i for i, name in enumerate(names)}
    index_of.update({row["key"]: i for i, row in enumerate(metadata) if row.get("key")})
    groups: dict[tuple[str, str], list[tuple[tuple, int]]] = {}
    for i, row in enumerate(metadata):
        parent = row.get("parent_key") or row.get("parent_model")
        if parent is not None and row.get("layer") is not None:
            groups.setdefault(("lens", str(parent)), []).append((_numeric_order(row["layer"]), i))
            continue
        run = next((row[k] for k in ("trajectory", "run", "path") if row.get(k) not in (None, "")), None)
        if run is not None and row.get("step") not in (None, ""):
            groups.setdefault(("run", str(run)), []).append((_numeric_order(row["step"]), i))
    paths = []
    for (kind, group), members in groups.items():
        path = [i for _, i in sorted(members)]
        parent = index_of.get(group) if kind == "lens" else None
        if parent is not None and parent not in path:
            path.append(parent)
        if len(path) > 1:
            paths.append(path)
    return paths


# Metadata columns that usually name groups of models, in the order a page colours by the
# first one present when no column is asked for.
_GROUP_COLUMNS = ("group", "family", "run", "trajectory", "architecture")
# Up to this many models, the page writes every name beside its point.
_NAMED_POINTS = 40


def _default_color_by(colorings: Mapping[str, dict]) -> str | None:
    """The column a page colours by when none is asked for: a usual group column, else the
    first categorical one (a column with a value per model is no coloring: see
    :func:`_page_coloring`)."""
    named = [column for column in _GROUP_COLUMNS if column in colorings]
    categorical = [column for column, coloring in colorings.items() if coloring["kind"] == "category"]
    return (named or categorical or [None])[0]


def map_html(
    coordinates,
    names: Sequence[str],
    path: str | Path,
    *,
    metadata: Sequence[Mapping[str, object]] | None = None,
    color_by: str | None = None,
    kl=None,
    kl_unit: str = "nats per text",
    neighbors: int = 10,
    axis_label: str = "t-SNE",
    title: str = "Model map",
    display_names: Sequence[str] | None = None,
) -> None:
    """Save the map as one self-contained interactive HTML file (plotly.js embedded, no
    network), written atomically.

    Zoom (wheel, box) and pan; hovering a point shows the model's name and every field of its
    ``metadata`` row (one mapping per model); a menu colours the points by any metadata column
    that tells models apart (legend for categories, colour bar for numbers; ``color_by`` is the
    first one shown, by default a column naming groups such as ``family`` or ``architecture``);
    a search box highlights models whose name contains the query; trajectories
    (:func:`trajectory_paths`) are drawn as lines; clicking a model lists its ``neighbors``
    nearest models by the K×K matrix ``kl`` (in ``kl_unit``). A map of up to 40 models writes
    every name beside its point.

    ``display_names`` (short names, e.g. ``step 15`` for a checkpoint directory) replace the
    names on the plot, in the legend and in the neighbour list; the hover shows both, and the
    search matches both. Every string from the data is shown as text, never as markup.
    """
    from plotly.offline import get_plotlyjs

    from ._map_page import PAGE, SCRIPT

    coordinates = _check_coordinates(coordinates, names)
    count = len(names)
    if display_names is None:
        display_names = names
    if len(display_names) != count:
        raise AnalysisError(f"{len(display_names)} display names for {count} models")
    columns = _metadata_columns(metadata, count)
    if color_by is not None and color_by not in columns:
        raise AnalysisError(f"cannot colour by {color_by!r}: no such metadata column")
    rows = metadata or [{} for _ in names]
    hover = []
    for name, shown_name, row in zip(names, display_names, rows):
        fields = [f"<b>{_as_text(shown_name)}</b>"]
        if str(shown_name) != str(name):
            fields.append(_as_text(name))
        fields += [
            f"{_as_text(column)}: {_as_text(_shown(row.get(column)))}" for column in columns if column in row
        ]
        hover.append("<br>".join(fields))
    colorings = {}
    for column in columns:
        coloring = _page_coloring([_shown(row.get(column)) or None for row in rows], count)
        if coloring is not None:
            colorings[column] = coloring
    if color_by is None:
        color_by = _default_color_by(colorings)
    nearest: list[list[list[float]]] = [[] for _ in names]
    if kl is not None:
        kl = np.asarray(kl, dtype=np.float64)
        if kl.shape != (count, count):
            raise AnalysisError(f"a KL matrix of shape {kl.shape} for {count} models")
        masked = kl.copy()
        np.fill_diagonal(masked, np.inf)
        order = np.argsort(masked, axis=1, kind="stable")[:, : min(neighbors, count - 1)]
        nearest = [[[int(j), float(kl[i, j])] for j in row] for i, row in enumerate(order)]
    data = {
        "names": [str(name) for name in display_names],
        "references": [str(name) for name in names],
        "label_points": count <= _NAMED_POINTS,
        "x": coordinates[:, 0].tolist(),
        "y": coordinates[:, 1].tolist(),
        "hover": hover,
        "colorings": colorings,
        "color_by": color_by if color_by in colorings else None,
        "paths": trajectory_paths(names, metadata),
        "neighbors": nearest,
        "kl_unit": kl_unit,
        "axis_label": axis_label,
    }
    # Inside <script>, "</" would end the element early: escape "<" in the JSON text.
    embedded = json.dumps(data, allow_nan=False).replace("<", "\\u003c")
    document = PAGE.format(
        title=html.escape(title), data=embedded, plotly=get_plotlyjs(), script=SCRIPT
    )
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


def plot_trajectories(
    coordinates,
    names: Sequence[str],
    paths: Sequence[Sequence[int]],
    path: str | Path,
    *,
    path_labels: Sequence[str] | None = None,
    threads: Sequence[Sequence[int]] = (),
    axis_label: str = "PCA",
    title: str = "Trajectories on the model map",
) -> None:
    """The map with paths drawn on it: every model a grey point, each path (row indices in
    order, e.g. the checkpoints of a run) a coloured line with an arrow per step, its start and
    end named; ``threads`` (e.g. a model's logit-lens layers, embeddings to output) are drawn
    as thin dotted lines of small points, their ends named."""
    coordinates = _check_coordinates(coordinates, names)
    figure = Figure(figsize=(10, 7.5), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.scatter(coordinates[:, 0], coordinates[:, 1], s=14, color=_GREY, zorder=1)
    palette = colormaps["tab10"]
    labels = list(path_labels) if path_labels is not None else [f"path {i + 1}" for i in range(len(paths))]
    for number, order in enumerate(paths):
        points = coordinates[np.asarray(order, dtype=np.int64)]
        colour = to_hex(palette(number % 10))
        axes.plot(points[:, 0], points[:, 1], color=colour, linewidth=1.2, alpha=0.6, zorder=2,
                  label=labels[number])
        for start, end in zip(points[:-1], points[1:]):
            axes.annotate(
                "", xy=end, xytext=start, zorder=3,
                arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 1.2, "shrinkA": 2, "shrinkB": 2},
            )
        axes.scatter(points[:, 0], points[:, 1], s=18, color=colour, zorder=4)
        for index, where in ((order[0], "start"), (order[-1], "end")):
            axes.annotate(
                f"{names[index]} ({where})", coordinates[index], fontsize=7, xytext=(4, 4),
                textcoords="offset points", color=colour,
            )
    for order in threads:
        points = coordinates[np.asarray(order, dtype=np.int64)]
        axes.plot(points[:, 0], points[:, 1], ":", color="#555555", linewidth=0.8, zorder=2)
        axes.scatter(points[:, 0], points[:, 1], s=6, color="#555555", zorder=3)
        for index in (order[0], order[-1]):
            axes.annotate(names[index], coordinates[index], fontsize=6, xytext=(3, -8),
                          textcoords="offset points", color="#555555")
    if paths:
        axes.legend(fontsize=8, loc="best")
    axes.set_xlabel(f"{axis_label} 1")
    axes.set_ylabel(f"{axis_label} 2")
    axes.set_title(title)
    _save(figure, path)


def plot_tree(tree: TreeNode, path: str | Path, *, title: str = "Model tree", unit: str = "") -> None:
    """Save the tree as a rectangular dendrogram (leaves on the right, branch lengths along x)
    in the format of ``path``'s suffix, written atomically."""
    leaves = tree.leaves()
    figure = Figure(figsize=(9, max(3.0, 0.28 * len(leaves) + 1.2)), dpi=150, layout="constrained")
    axes = figure.add_subplot()
    rows = {}

    def draw(node: TreeNode, x: float) -> float:
        """Draw ``node``'s subtree from its parent's x; returns the node's y."""
        end = x + node.length
        if not node.children:
            y = rows[id(node)] = len(rows)
            axes.text(end, y, f"  {node.name}", va="center", fontsize=8)
        else:
            ys = [draw(child, end) for child in node.children]
            y = (min(ys) + max(ys)) / 2
            axes.plot([end, end], [min(ys), max(ys)], color="#333333", linewidth=1)
        axes.plot([x, end], [y, y], color="#333333", linewidth=1)
        return y

    draw(tree, 0.0)
    axes.set_ylim(len(leaves) - 0.5, -0.5)
    axes.set_yticks([])
    for side in ("left", "right", "top"):
        axes.spines[side].set_visible(False)
    axes.set_xlabel(f"branch length{f' ({unit})' if unit else ''}")
    axes.set_title(title)
    axes.margins(x=0.25)  # room for the leaf names right of the deepest leaf
    _save(figure, path)


def plot_component_tree(
    result: ICAResult, path: str | Path, labels: list[str] | None = None, title: str = ""
) -> None:
    """Draw the maximum spanning tree of the independent axes (edge width and label: the
    correlation of squared sources) as an image in the format of ``path``'s suffix, written
    atomically."""
    from scipy.sparse.csgraph import shortest_path

    count = len(result.non_gaussianity)
    labels = labels or [f"IC{i + 1}" for i in range(count)]
    # Place nodes by classical MDS of the tree's path lengths (1 − weight per edge), so that
    # strongly dependent axes sit together.
    lengths = np.zeros((count, count))
    for i, j, weight in result.tree:
        lengths[i, j] = lengths[j, i] = max(1.0 - weight, 1e-3)
    if count > 1:
        distances = shortest_path(lengths, directed=False)
        centring = np.eye(count) - 1.0 / count
        values, vectors = np.linalg.eigh(-0.5 * centring @ distances**2 @ centring)
        top = np.argsort(values)[::-1][:2]
        positions = vectors[:, top] * np.sqrt(np.maximum(values[top], 0))
        if positions.shape[1] < 2:
            positions = np.column_stack([positions, np.zeros(count)])
    else:
        positions = np.zeros((1, 2))
    figure = Figure(figsize=(6.4, 5.2), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    strongest = max((abs(w) for _, _, w in result.tree), default=1.0) or 1.0
    for i, j, weight in result.tree:
        (x0, y0), (x1, y1) = positions[i], positions[j]
        axes.plot([x0, x1], [y0, y1], color="#555555", linewidth=0.8 + 4 * abs(weight) / strongest, zorder=1)
        axes.annotate(f"{weight:.2f}", ((x0 + x1) / 2, (y0 + y1) / 2), fontsize=8, color="#333333", ha="center")
    sizes = 300 + 1200 * result.non_gaussianity / max(result.non_gaussianity.max(), 1e-12)
    axes.scatter(positions[:, 0], positions[:, 1], s=sizes, color="#1f77b4", alpha=0.85, zorder=2)
    for (x, y), label in zip(positions, labels):
        axes.annotate(label, (x, y), ha="center", va="center", fontsize=9, color="white", zorder=3)
    axes.set_title(title or "Independent axes: maximum spanning tree of squared-source correlation", fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.margins(0.15)
    _save(figure, path)
