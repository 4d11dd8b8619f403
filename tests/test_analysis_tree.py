"""Trees from the KL matrix: neighbour joining recovers additive trees; Newick round trips;
the ``jaxmap tree`` command writes Newick and a dendrogram."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmap.analysis import AnalysisError
from jaxmap.analysis.tree import (
    TreeNode,
    average_linkage,
    build_tree,
    neighbor_joining,
    parse_newick,
)
from jaxmap.cli import main


def _random_tree(rng: np.random.Generator, leaves: int) -> TreeNode:
    """A random binary tree with positive branch lengths, built by random joins."""
    nodes = [TreeNode(name=f"m{i}", length=float(rng.uniform(0.05, 2.0))) for i in range(leaves)]
    while len(nodes) > 1:
        i, j = sorted(rng.choice(len(nodes), 2, replace=False))
        joined = TreeNode(children=[nodes[i], nodes[j]], length=float(rng.uniform(0.05, 2.0)))
        nodes = [n for k, n in enumerate(nodes) if k not in (i, j)] + [joined]
    nodes[0].length = 0.0
    return nodes[0]


def _path_lengths(tree: TreeNode) -> tuple[list[str], np.ndarray]:
    """The additive metric of ``tree``: the sum of branch lengths between every two leaves."""
    depth, ancestors = {}, {}

    def visit(node: TreeNode, above: float, path: tuple[int, ...]) -> None:
        here = above + node.length
        if not node.children:
            depth[node.name], ancestors[node.name] = here, path
        for position, child in enumerate(node.children):
            visit(child, here, path + ((id(node), here),))

    visit(tree, 0.0, ())
    names = sorted(depth, key=lambda name: int(name[1:]))
    d = np.zeros((len(names), len(names)))
    for a, first in enumerate(names):
        for b, second in enumerate(names):
            shared = [x for x, y in zip(ancestors[first], ancestors[second]) if x == y]
            d[a, b] = depth[first] + depth[second] - 2 * shared[-1][1] if a != b else 0.0
    return names, d


@pytest.mark.parametrize("seed", range(5))
def test_neighbor_joining_recovers_an_additive_tree(seed):
    rng = np.random.default_rng(seed)
    truth = _random_tree(rng, 12)
    names, distances = _path_lengths(truth)
    order = rng.permutation(len(names))  # the input order must not matter
    tree = neighbor_joining(distances[np.ix_(order, order)], [names[i] for i in order])
    assert tree.splits() == truth.splits()
    assert len(truth.splits()) == 12 - 3  # a binary unrooted tree: every split present
    recovered_names, recovered = _path_lengths(tree)
    assert recovered_names == names
    np.testing.assert_allclose(recovered, distances, atol=1e-9)


def test_newick_round_trips_names_and_lengths():
    names, distances = _path_lengths(_random_tree(np.random.default_rng(7), 8))
    odd = ["org/model@rev", "a b", "it's", "x:y", "(p)", "m,5", "plain", "ü"]
    tree = neighbor_joining(distances, odd)
    text = tree.to_newick(digits=17)
    back = parse_newick(text)
    assert sorted(back.leaves()) == sorted(odd)
    assert back.splits() == tree.splits()
    _, lengths = _path_lengths(_renamed(back, {n: f"m{i}" for i, n in enumerate(odd)}))
    np.testing.assert_allclose(lengths, distances, atol=1e-9)
    with pytest.raises(AnalysisError, match="Newick"):
        parse_newick("(a,b")


def _renamed(tree: TreeNode, names: dict[str, str]) -> TreeNode:
    if not tree.children:
        return TreeNode(name=names[tree.name], length=tree.length)
    return TreeNode(length=tree.length, children=[_renamed(c, names) for c in tree.children])


def test_average_linkage_is_ultrametric_and_groups_close_pairs():
    # Two tight pairs far apart: UPGMA must pair them, and every leaf is as deep as the others.
    d = np.array([[0, 1, 9, 9], [1, 0, 9, 9], [9, 9, 0, 2], [9, 9, 2, 0]], float)
    tree = average_linkage(d, ["a", "b", "c", "d"])
    assert tree.splits() == {frozenset({"a", "b"})}
    depths = []

    def visit(node, above):
        if not node.children:
            depths.append(above + node.length)
        for child in node.children:
            visit(child, above + node.length)

    visit(tree, 0.0)
    np.testing.assert_allclose(depths, 4.5)
    with pytest.raises(AnalysisError, match="unknown tree method"):
        build_tree(d, list("abcd"), "ward")
    with pytest.raises(AnalysisError, match="not symmetric"):
        build_tree(d + np.triu(np.ones((4, 4)), 1), list("abcd"))


def test_tree_command_writes_newick_and_dendrogram(tmp_path, capsys):
    rng = np.random.default_rng(3)
    families = rng.normal(size=(2, 400)) * 5
    L = np.repeat(families, 3, axis=0) + rng.normal(size=(6, 400)) * 0.5 - 300
    matrix = tmp_path / "L.npy"
    np.save(matrix, L)
    newick, plot = tmp_path / "tree.nwk", tmp_path / "tree.png"
    for method in ("nj", "average"):
        assert main(["tree", str(matrix), "--method", method, "--out", str(newick), "--plot", str(plot)]) == 0
        tree = parse_newick(newick.read_text())
        assert sorted(tree.leaves()) == [f"model_{i}" for i in range(6)]
        # The two families of three are separated by the tree.
        assert frozenset({"model_0", "model_1", "model_2"}) in tree.splits() or frozenset(
            {"model_3", "model_4", "model_5"}
        ) in tree.splits()
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["tree", str(matrix)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(";")
    assert main(["tree", str(matrix), "--bits-per-byte"]) == 2
    assert "byte lengths" in capsys.readouterr().err
