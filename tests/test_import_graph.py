"""jaxmap's import graph, built from the source with ``ast``, has no cycle, and the model ports
(``jaxmap.models``) are a leaf package.

An edge is every ``import`` or ``from ... import`` statement in a module: at module level, inside
functions (lazy imports: the cycle of issue 24 ran through them), classes, ``try`` blocks and
``if TYPE_CHECKING:`` blocks alike. ``from pkg import name`` points at the module ``pkg.name``
where there is one, else at ``pkg``. Two kinds of reference draw no edge:

- a module's import of its own package (``from . import helper`` in ``jaxmap/cli/maps.py``):
  Python initialises a package before any of its modules, so every module of a package stands
  on its ``__init__`` already;
- a module looked up by name at run time (``importlib.import_module``): ``jaxmap``'s lazy exports
  and the old homes of moved names (:mod:`jaxmap._moved`) hand names on that way, without
  depending on what they hand on.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What the model ports may import from jaxmap besides themselves.
MODELS_MAY_IMPORT = ("jaxmap.errors", "jaxmap.kernels", "jaxmap._moved")


def package_dirs(root: Path) -> dict[str, Path]:
    """Each top-level package -> its folder, as pyproject.toml maps them (``jaxmap.kernels``
    lives in ``kernels/``)."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {package: root / folder for package, folder in setuptools["package-dir"].items()}


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its ``__init__.py``)."""
    files = {}
    for package, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join((package, *parts))] = path
    return files


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, files: dict) -> list[tuple[str, int]]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        source = node.module if not node.level else ".".join(filter(None, (base, node.module)))
        names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source for alias in node.names]
    out = []
    for name in names:
        while name not in files and "." in name:
            name = name.rpartition(".")[0]
        if name in files:
            out.append((name, node.lineno))
    return out


def import_graph(files: dict[str, Path]) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: line of the first such import} (see the module docstring)."""
    graph = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, line in _targets(module, is_package, node, files):
                own_package = module.startswith(f"{target}.")
                if target != module and not own_package:
                    edges.setdefault(target, line)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(group)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for module in sorted(graph):
            if module not in index:
                visit(module)
    finally:
        sys.setrecursionlimit(limit)
    return [_one_cycle(sorted(group), graph) for group in groups]


def _one_cycle(group: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """The shortest way round from the group's first module back to itself."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(graph[module]):
                if target == start:
                    return [*paths[module], start]
                if target in members and target not in paths:
                    paths[target] = [*paths[module], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no way round {group}")


def describe(cycle: list[str], graph: dict[str, dict[str, int]], files: dict[str, Path], root: Path = ROOT) -> str:
    steps = [
        f"  {module} -> {target} ({files[module].relative_to(root)}:{graph[module][target]})"
        for module, target in zip(cycle, cycle[1:])
    ]
    return f"import cycle of {len(cycle) - 1} modules:\n" + "\n".join(steps)


@pytest.fixture(scope="module")
def jaxmap_graph():
    files = module_files(package_dirs(ROOT))
    return files, import_graph(files)


def test_jaxmap_has_no_import_cycle(jaxmap_graph):
    files, graph = jaxmap_graph
    found = cycles(graph)
    assert not found, "\n".join(describe(cycle, graph, files) for cycle in found)


def test_the_model_ports_are_a_leaf_package(jaxmap_graph):
    files, graph = jaxmap_graph
    upward = {
        f"{module} -> {target} ({files[module].relative_to(ROOT)}:{line})"
        for module, edges in graph.items() if module == "jaxmap.models" or module.startswith("jaxmap.models.")
        for target, line in edges.items()
        if not target.startswith("jaxmap.models") and not target.startswith(MODELS_MAY_IMPORT)
    }
    assert not upward, "jaxmap.models imports upward:\n" + "\n".join(sorted(upward))


def test_the_graph_sees_lazy_imports_and_the_kernels_folder(jaxmap_graph):
    files, graph = jaxmap_graph
    assert files["jaxmap.kernels.fused_logprob"] == ROOT / "kernels" / "fused_logprob.py"
    assert "jaxmap.kernels.fused_logprob" in graph["jaxmap.engine"]
    # Imported inside new_module() and train() only.
    assert "jaxmap.module" in graph["jaxmap.training"]
    assert "jaxmap.models.layout" in graph["jaxmap.sharding"]


def test_a_cycle_through_a_function_level_import_is_found_and_named(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackage-dir = { "pkg" = "pkg" }\n')
    (package / "__init__.py").write_text("from . import low\n")
    (package / "low.py").write_text("def f():\n    from .sub.high import g\n    return g\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "high.py").write_text("from .. import low\nfrom . import helper\n")
    (package / "sub" / "helper.py").write_text("from .. import sub\nimport importlib\nimportlib.import_module('pkg.low')\n")
    files = module_files(package_dirs(tmp_path))
    graph = import_graph(files)
    assert graph["pkg.sub.helper"] == {}, "neither its own package nor a module named at run time is an edge"
    found = cycles(graph)
    assert found == [["pkg.low", "pkg.sub.high", "pkg.low"]]
    text = describe(found[0], graph, files, tmp_path)
    assert "pkg.low -> pkg.sub.high (pkg/low.py:2)" in text and "pkg.sub.high -> pkg.low (pkg/sub/high.py:1)" in text


def test_the_old_homes_of_moved_names_hand_them_on_with_a_warning():
    import jaxmap.analysis.ica
    import jaxmap.analysis.tree
    from jaxmap.analysis import plots

    for old, name in ((jaxmap.analysis.ica, "plot_component_tree"), (jaxmap.analysis.tree, "plot_tree")):
        with pytest.warns(DeprecationWarning, match=rf"^{old.__name__}\.{name} moved to jaxmap\.analysis\.plots\.{name}$"):
            assert getattr(old, name) is getattr(plots, name)
    with pytest.raises(AttributeError):
        jaxmap.analysis.tree.no_such_name


def test_importing_a_moved_name_warns_once():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from jaxmap.models import DecoderLM  # noqa: F401
    assert [str(w.message) for w in caught] == ["jaxmap.models.DecoderLM moved to jaxmap.module.DecoderLM"]
    assert caught[0].filename == __file__
