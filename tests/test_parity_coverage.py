"""Every architecture jaxmap registers (jaxmap.models.ARCHITECTURES) has at least one parity case
against transformers in a tests/test_parity*.py table, or an exemption in parity.NO_PARITY_CASE
that says why transformers cannot build it."""

from __future__ import annotations

import importlib
from pathlib import Path

from jaxmap.models import ARCHITECTURES

from parity import NO_PARITY_CASE, case_architecture


def parity_cases() -> dict[str, list[str]]:
    """architecture -> the parity cases (``module::case``) whose config.json names it, over the
    ``CASES`` table of every tests/test_parity*.py module."""
    covered: dict[str, list[str]] = {}
    for path in sorted(Path(__file__).parent.glob("test_parity*.py")):
        module = importlib.import_module(path.stem)
        for name, case in getattr(module, "CASES", {}).items():
            covered.setdefault(case_architecture(case), []).append(f"{path.stem}::{name}")
    return covered


def uncovered(architectures, covered: dict[str, list[str]]) -> list[str]:
    return sorted(set(architectures) - set(covered) - set(NO_PARITY_CASE))


def test_every_registered_architecture_has_a_parity_case():
    covered = parity_cases()
    missing = uncovered(ARCHITECTURES, covered)
    assert not missing, f"registered architectures without a parity case: {', '.join(missing)}"
    # Every case checks a registered architecture, and no exemption outlives the reason for it.
    assert set(covered) <= set(ARCHITECTURES), sorted(set(covered) - set(ARCHITECTURES))
    stale = sorted(set(NO_PARITY_CASE) & (set(covered) | (set(NO_PARITY_CASE) - set(ARCHITECTURES))))
    assert not stale, f"exempted from parity but covered or no longer registered: {stale}"
    assert all(reason.strip() for reason in NO_PARITY_CASE.values())


def test_an_architecture_without_a_case_is_named():
    covered = parity_cases()
    assert uncovered([*ARCHITECTURES, "NewForCausalLM"], covered) == ["NewForCausalLM"]
