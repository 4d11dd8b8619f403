"""Check a `jaxmap demo` output folder as CI does: the map, the page and the report are there,
and every model of the store is on the map with finite coordinates and named in the report.

    python scripts/check_demo.py jaxmap-demo
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from jaxmap import open_store


def problems(out: Path) -> list[str]:
    found = []
    for name in ("map.png", "map.html", "report.md", "demo.h5"):
        if not (out / name).is_file() or (out / name).stat().st_size == 0:
            found.append(f"{out / name}: missing or empty")
    if found:
        return found
    if not (out / "map.png").read_bytes().startswith(b"\x89PNG"):
        found.append(f"{out / 'map.png'}: not a PNG image")
    models = open_store(out / "demo.h5").models
    page = (out / "map.html").read_text(encoding="utf-8")
    data = re.search(r'<script type="application/json" id="map-data">(.*?)</script>', page, re.S)
    if data is None:
        return found + [f"{out / 'map.html'}: no map data"]
    shown = json.loads(data.group(1))
    placed = {
        reference: name
        for reference, name, x, y in zip(shown["references"], shown["names"], shown["x"], shown["y"])
        if math.isfinite(x) and math.isfinite(y)
    }
    report = (out / "report.md").read_text(encoding="utf-8")
    for model in models:
        if model not in placed:
            found.append(f"{model}: not on the map")
        elif placed[model] not in report:
            found.append(f"{model}: its name {placed[model]!r} is not in report.md")
    return found


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "jaxmap-demo")
    found = problems(out)
    for problem in found:
        print(f"check_demo: {problem}", file=sys.stderr)
    if not found:
        print(f"check_demo: {out}: map.png, map.html and report.md hold all {len(open_store(out / 'demo.h5').models)} models")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
