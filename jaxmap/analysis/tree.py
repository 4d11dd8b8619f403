"""Trees of models from their pairwise KL estimates: neighbour joining and average linkage
(UPGMA), written as Newick (drawn as a dendrogram by :func:`jaxmap.analysis.plots.plot_tree`).

Neighbour joining (Saitou and Nei, 1987) recovers the topology and branch lengths of any
additive tree metric exactly, and gives an unrooted tree; it is drawn rooted at its last join.
Average linkage assumes a clock (every leaf equally far from the root) and gives a rooted,
ultrametric tree. The estimated KL is symmetric but not a metric in general (it is a squared
distance), so branch lengths of an NJ tree may come out negative; they are kept as computed,
since clamping them would hide how far the data are from a tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .._moved import old_home
from ._arrays import AnalysisError

METHODS = ("nj", "average")


@dataclass
class TreeNode:
    """A node of a tree: a leaf has a ``name`` and no children. ``length`` is the branch to the
    node's parent (0 for the root)."""

    name: str | None = None
    length: float = 0.0
    children: list["TreeNode"] = field(default_factory=list)

    def leaves(self) -> list[str]:
        """Leaf names, left to right."""
        if not self.children:
            return [self.name or ""]
        return [leaf for child in self.children for leaf in child.leaves()]

    def to_newick(self, digits: int = 6) -> str:
        """The tree in Newick format, ``;`` included; names are quoted where Newick needs it."""
        return self._newick(digits, root=True) + ";"

    def _newick(self, digits: int, root: bool) -> str:
        text = (
            "(" + ",".join(child._newick(digits, False) for child in self.children) + ")"
            if self.children
            else _quoted(self.name or "")
        )
        return text if root else f"{text}:{self.length:.{digits}g}"

    def splits(self) -> set[frozenset[str]]:
        """The non-trivial bipartitions of the leaves (as the smaller-named side), which define
        an unrooted topology: two trees have the same topology iff their splits are equal."""
        everything = frozenset(self.leaves())
        found: set[frozenset[str]] = set()

        def visit(node: TreeNode) -> frozenset[str]:
            below = frozenset(node.leaves()) if not node.children else frozenset().union(
                *(visit(child) for child in node.children)
            )
            if 1 < len(below) < len(everything) - 1:
                other = everything - below
                found.add(min(below, other, key=lambda side: sorted(side)))
            return below

        visit(self)
        return found


_PLAIN_NAME = re.compile(r"^[^\s(),:;'\[\]]+$")


def _quoted(name: str) -> str:
    return name if _PLAIN_NAME.match(name) else "'" + name.replace("'", "''") + "'"


def _check_distances(distances, names: Sequence[str]) -> np.ndarray:
    distances = np.asarray(distances, dtype=np.float64)
    if distances.ndim != 2 or distances.shape[0] != distances.shape[1]:
        raise AnalysisError(f"a tree needs a square distance matrix, got shape {distances.shape}")
    if len(names) != distances.shape[0]:
        raise AnalysisError(f"{len(names)} names for {distances.shape[0]} models")
    if distances.shape[0] < 2:
        raise AnalysisError("a tree needs at least 2 models")
    if not np.isfinite(distances).all():
        raise AnalysisError("the distance matrix has non-finite entries")
    if len(set(names)) != len(names):
        raise AnalysisError("model names must be distinct to name the leaves of a tree")
    # KL estimates are symmetric up to rounding; an asymmetric matrix is another thing.
    if np.abs(distances - distances.T).max() > 1e-9 * max(np.abs(distances).max(), 1e-300):
        raise AnalysisError("the distance matrix is not symmetric")
    return (distances + distances.T) / 2


def neighbor_joining(distances, names: Sequence[str]) -> TreeNode:
    """The neighbour-joining tree of a symmetric K×K distance matrix, rooted at the last join.

    Each step joins the pair (i, j) minimising ``(r−2)·d_ij − R_i − R_j`` (R: row sums over
    the r active nodes), as Saitou and Nei's Q criterion; the new node's distance to every
    other is ``(d_ik + d_jk − d_ij) / 2``. O(K³) time.
    """
    d = _check_distances(distances, names)
    nodes = [TreeNode(name=name) for name in names]
    while len(nodes) > 2:
        count = len(nodes)
        totals = d.sum(axis=1)
        criterion = (count - 2) * d - totals[:, None] - totals[None, :]
        np.fill_diagonal(criterion, np.inf)
        i, j = divmod(int(np.argmin(criterion)), count)
        i, j = min(i, j), max(i, j)
        length_i = d[i, j] / 2 + (totals[i] - totals[j]) / (2 * (count - 2))
        nodes[i].length, nodes[j].length = length_i, d[i, j] - length_i
        joined = TreeNode(children=[nodes[i], nodes[j]])
        to_joined = (d[i] + d[j] - d[i, j]) / 2
        keep = [k for k in range(count) if k not in (i, j)]
        d = np.block(
            [
                [d[np.ix_(keep, keep)], to_joined[keep][:, None]],
                [to_joined[keep][None, :], np.zeros((1, 1))],
            ]
        )
        nodes = [nodes[k] for k in keep] + [joined]
    first, last = nodes
    if len(first.leaves()) == 1 and last.children:
        # Root at the last inner node: its third branch is the remaining distance.
        first.length = d[0, 1]
        last.children.append(first)
        last.length = 0.0
        return last
    first.length = last.length = d[0, 1] / 2
    return TreeNode(children=[first, last])


def average_linkage(distances, names: Sequence[str]) -> TreeNode:
    """The average-linkage (UPGMA) tree of a symmetric distance matrix (scipy's linkage),
    rooted, with branch lengths the differences of merge heights halved (leaf to root = half
    the merge distance, as UPGMA defines node heights)."""
    from scipy.cluster.hierarchy import linkage, to_tree
    from scipy.spatial.distance import squareform

    d = _check_distances(distances, names)
    np.fill_diagonal(d, 0.0)
    root = to_tree(linkage(squareform(d, checks=False), method="average"))

    def convert(node, parent_height: float) -> TreeNode:
        height = node.dist / 2
        converted = TreeNode(
            name=names[node.id] if node.is_leaf() else None, length=parent_height - height
        )
        if not node.is_leaf():
            converted.children = [convert(node.left, height), convert(node.right, height)]
        return converted

    tree = convert(root, root.dist / 2)
    tree.length = 0.0
    return tree


def build_tree(distances, names: Sequence[str], method: str = "nj") -> TreeNode:
    """A tree of the models: ``method`` ``"nj"`` (neighbour joining) or ``"average"``."""
    if method == "nj":
        return neighbor_joining(distances, names)
    if method == "average":
        return average_linkage(distances, names)
    raise AnalysisError(f"unknown tree method {method!r}; choose one of {', '.join(METHODS)}")


def parse_newick(text: str) -> TreeNode:
    """Read a Newick tree (names plain or single-quoted, optional ``:length``) back."""
    position = 0
    text = text.strip()

    def fail(what: str):
        raise AnalysisError(f"Newick: {what} at character {position}")

    def name() -> str:
        nonlocal position
        if position < len(text) and text[position] == "'":
            position += 1
            out = []
            while True:
                end = text.find("'", position)
                if end < 0:
                    fail("unterminated quoted name")
                out.append(text[position:end])
                position = end + 1
                if text.startswith("'", position):
                    out.append("'")
                    position += 1
                else:
                    return "".join(out)
        match = re.compile(r"[^\s(),:;'\[\]]*").match(text, position)
        position = match.end()
        return match.group()

    def node() -> TreeNode:
        nonlocal position
        result = TreeNode()
        if text.startswith("(", position):
            position += 1
            result.children.append(node())
            while text.startswith(",", position):
                position += 1
                result.children.append(node())
            if not text.startswith(")", position):
                fail("expected ')'")
            position += 1
        label = name()
        result.name = label or None
        if text.startswith(":", position):
            match = re.compile(r":([-+0-9.eEinfa]+)").match(text, position)
            if not match:
                fail("expected a branch length")
            result.length = float(match.group(1))
            position = match.end()
        return result

    tree = node()
    if not text.startswith(";", position) or position + 1 != len(text):
        fail("expected ';' at the end")
    return tree


# plot_tree moved to .plots, beside the other pictures; the old import warns but works.
__getattr__ = old_home(__name__, {"plot_tree": "jaxmap.analysis.plots"})
