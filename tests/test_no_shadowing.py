"""No top-level name of the checkout hides an installed distribution, from any working directory.

Python puts the working directory first on ``sys.path`` (``python -c``, ``python -m pytest``, a
notebook started there), so a package folder at the repository root is found before
site-packages. transformers 5.25 imports the PyPI ``kernels`` distribution, and the checkout's
``kernels/`` folder (installed as ``jaxmap.kernels``) once hid it from every test.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run_in_root(code: str, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _importable_top_level_names() -> list[str]:
    names = []
    for entry in ROOT.iterdir():
        if entry.name.startswith(".") or entry.name == "jaxmap":
            continue
        if entry.is_dir() and entry.name.isidentifier():
            names.append(entry.name)
        elif entry.suffix == ".py" and entry.stem.isidentifier():
            names.append(entry.stem)
    return sorted(names)


def test_transformers_and_the_pypi_kernels_come_from_site_packages_in_the_repository_root():
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the PyPI 'kernels' distribution is not installed here (transformers pulls it in)")
    files = _run_in_root(
        "import json, transformers, kernels, jaxmap.kernels.fused_logprob as ours\n"
        "print(json.dumps({'transformers': transformers.__file__, 'kernels': kernels.__file__,"
        " 'ours': ours.__file__}))"
    )
    for name in ("transformers", "kernels"):
        assert not Path(files[name]).resolve().is_relative_to(ROOT), (name, files[name])
    assert Path(files["ours"]).resolve() == ROOT / "kernels" / "fused_logprob.py"


def test_every_top_level_name_of_the_checkout_yields_to_an_installed_package(tmp_path):
    names = _importable_top_level_names()
    assert "kernels" in names and "tests" in names
    site = tmp_path / "site"
    for name in names:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text("INSTALLED = True\n")
    files = _run_in_root(
        "import importlib, json\n"
        f"names = {names!r}\n"
        "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))",
        PYTHONPATH=str(site),
    )
    for name in names:
        assert Path(files[name]) == site / name / "__init__.py", (name, files[name])
