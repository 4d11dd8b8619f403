"""The reference docs (docs/cli.md, docs/api.md) against the code: every command, option and
public name is documented, and nothing documented is gone."""

from __future__ import annotations

import argparse
import inspect
import re
import subprocess
from pathlib import Path

import pytest

import jaxmap
from jaxmap.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _sections(text: str, heading: str) -> dict[str, str]:
    """Name -> body of every heading that matches ``heading`` (a regex with one group)."""
    pattern = re.compile(rf"^{heading}\s*$", re.MULTILINE)
    names = pattern.findall(text)
    return dict(zip(names, pattern.split(text)[2::2]))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the jaxmap parser has no subcommands")


def _long_options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    )


def test_every_command_and_option_is_documented():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    sections = _sections(text, r"## jaxmap (\S+)")
    parser = build_parser()
    commands = _subcommands(parser)
    assert not sorted(set(commands) - set(sections)), f"undocumented commands: {sorted(set(commands) - set(sections))}"
    assert not sorted(set(sections) - set(commands)), f"documented commands that do not exist: {sorted(set(sections) - set(commands))}"
    undocumented = {
        name: [option for option in _long_options(sub) if option not in sections[name]]
        for name, sub in commands.items()
    }
    undocumented = {name: options for name, options in undocumented.items() if options}
    assert not undocumented, f"options missing from docs/cli.md: {undocumented}"
    introduction = text.split("\n## ", 1)[0]
    global_options = [o for o in _long_options(parser) if o not in introduction]
    assert not global_options, f"global options missing from docs/cli.md's introduction: {global_options}"


def _parameters(obj) -> list[str]:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [name for name in signature.parameters if name not in ("self", "cls")]


def test_every_public_name_is_documented_with_its_parameters():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    bodies = _sections(text, r"### jaxmap\.(\S+)")
    public = [name for name in jaxmap.__all__ if name != "__version__"]
    assert not sorted(set(public) - set(bodies)), f"undocumented: {sorted(set(public) - set(bodies))}"
    assert not sorted(set(bodies) - set(public)), f"documented but not exported: {sorted(set(bodies) - set(public))}"
    missing = {}
    for name in public:
        obj = getattr(jaxmap, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            continue
        absent = [p for p in _parameters(obj) if not re.search(rf"\b{re.escape(p)}\b", bodies[name])]
        if absent:
            missing[name] = absent
    assert not missing, f"parameters missing from docs/api.md: {missing}"


def test_the_project_points_to_no_document_outside_it():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for relative in tracked:
        path = ROOT / relative
        if path.suffix not in {".py", ".md", ".sh", ".toml", ".txt", ".cfg", ".yaml", ".yml"} or relative == "tests/test_docs_reference.py":
            continue
        content = path.read_text(encoding="utf-8", errors="replace")
        if "../shared" in content or "DESIGN.md" in content:
            offenders.append(relative)
    assert not offenders, f"files pointing outside the project: {offenders}"


@pytest.mark.parametrize("document", ["README.md", "docs/cli.md", "docs/api.md", "docs/method.md", "docs/store.md", "docs/scale-out.md"])
def test_relative_links_resolve(document):
    path = ROOT / document
    text = path.read_text(encoding="utf-8")
    broken = [
        target
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
        if "://" not in target and not (path.parent / target).exists()
    ]
    assert not broken, f"{document}: broken links {broken}"
