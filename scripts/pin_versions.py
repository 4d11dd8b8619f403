"""Record the tested environment: constraints.txt and pyproject.toml's upper bounds.

    python scripts/pin_versions.py write     # in the environment the whole suite just passed in
    python scripts/pin_versions.py relax     # drop pyproject.toml's upper bounds (a refresh's copy)

``write`` pins every installed distribution (direct and transitive, jaxmap and pip aside) in
constraints.txt and sets each declared dependency's upper bound to the installed version, so the
declared ranges never claim more than was tested. scripts/refresh_constraints.sh runs both in a
fresh environment; nothing else should change these files.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
UNPINNED = {"jaxmap", "pip"}
DEPENDENCY = re.compile(r'^(\s*)"([^"]+)"(,?.*)$')


def installed_versions() -> dict[str, str]:
    versions = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name and canonicalize_name(name) not in UNPINNED:
            versions[canonicalize_name(name)] = distribution.version
    return dict(sorted(versions.items()))


def constraints_text(versions: dict[str, str]) -> str:
    header = (
        "# The environment the whole test suite passed in; scripts/install.sh and scripts/test.sh\n"
        "# install against it. Rewritten only by scripts/refresh_constraints.sh "
        f"({datetime.date.today().isoformat()}, Python {platform.python_version()}, "
        f"{platform.machine()}).\n"
    )
    return header + "".join(f"{name}=={version}\n" for name, version in versions.items())


def _bounded(requirement: Requirement, upper: str | None) -> str:
    kept = sorted(
        (s for s in requirement.specifier if s.operator not in ("<", "<=")),
        key=lambda s: (not s.operator.startswith(">"), s.operator),
    )
    kept = [str(s) for s in kept]
    if upper is not None and not any(s.operator in ("==", "===") for s in requirement.specifier):
        kept.append(f"<={upper}")
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    marker = f"; {requirement.marker}" if requirement.marker else ""
    return f"{requirement.name}{extras}{','.join(kept)}{marker}"


def rewrite_bounds(pyproject: Path, versions: dict[str, str] | None) -> None:
    """Set (``versions`` given) or drop (None) the upper bound of every quoted dependency line."""
    lines = pyproject.read_text().splitlines(keepends=True)
    inside = False
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(("dependencies = [", "test = [")):
            inside = True
            continue
        if inside and stripped.startswith("]"):
            inside = False
        match = DEPENDENCY.match(line.rstrip("\n")) if inside else None
        if match is None:
            continue
        requirement = Requirement(match.group(2))
        upper = None
        if versions is not None:
            name = canonicalize_name(requirement.name)
            if name not in versions:
                sys.exit(f"pin_versions: {requirement.name} is declared but not installed here")
            upper = versions[name].split("+")[0]
        lines[index] = f'{match.group(1)}"{_bounded(requirement, upper)}"{match.group(3)}\n'
    pyproject.write_text("".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("write", "relax"))
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to rewrite")
    args = parser.parse_args()
    pyproject = args.root / "pyproject.toml"
    if args.action == "relax":
        rewrite_bounds(pyproject, None)
        return
    versions = installed_versions()
    (args.root / "constraints.txt").write_text(constraints_text(versions))
    rewrite_bounds(pyproject, versions)
    print(f"pin_versions: {len(versions)} distributions pinned in {args.root / 'constraints.txt'}")


if __name__ == "__main__":
    main()
