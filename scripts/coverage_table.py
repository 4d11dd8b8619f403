"""Write README.md's architecture table from jaxmap.models.ARCHITECTURES.

Run it after registering an architecture (tests/test_registry.py fails until README is current):

    python scripts/coverage_table.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from jaxmap.models.coverage import coverage_table, replace_table

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> int:
    current = README.read_text(encoding="utf-8")
    updated = replace_table(current, coverage_table())
    if updated == current:
        print(f"{README}: architecture table already current")
        return 0
    README.write_text(updated, encoding="utf-8")
    print(f"{README}: architecture table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
