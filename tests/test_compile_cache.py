"""The persistent compilation cache between real processes: a second process scoring
same-shaped models compiles nothing; a change to the program (dtype, attention kernel) does."""

from __future__ import annotations

import json
import subprocess
import sys


def _score(models, texts, out, cache, *extra):
    result = subprocess.run(
        [sys.executable, "-m", "jaxmap.cli", "score", *map(str, models), "--texts", str(texts),
         "--out", str(out), "--quiet", "--compile-cache", str(cache), *extra],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(out.with_name(out.name + ".run.json").read_text())["jobs"][-1]
    assert record["compile_cache"]["directory"] == str(cache)
    return record["compile_cache"]


def test_a_second_process_loads_what_the_first_compiled(tiny_models, text_file, tmp_path):
    cache = tmp_path / "xla cache"
    first = _score(tiny_models[:2], text_file, tmp_path / "a.h5", cache)
    assert first["compiled"] >= 1 and first["loaded"] == 0
    second = _score(tiny_models[2:], text_file, tmp_path / "b.h5", cache)
    assert second == {"directory": str(cache), "compiled": 0, "loaded": first["compiled"]}
    # The key is the program: another dtype or attention kernel is another program.
    for extra in (("--dtype", "bfloat16"), ("--attention", "blockwise")):
        other = _score(tiny_models[:1], text_file, tmp_path / f"{extra[1]}.h5", cache, *extra)
        assert other["compiled"] >= 1, extra


def test_the_cache_can_be_turned_off(tiny_models, text_file, tmp_path):
    out = tmp_path / "s.h5"
    result = subprocess.run(
        [sys.executable, "-m", "jaxmap.cli", "score", str(tiny_models[0]), "--texts", str(text_file),
         "--out", str(out), "--quiet", "--compile-cache", "none"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "compile_cache" not in json.loads(out.with_name(out.name + ".run.json").read_text())["jobs"][-1]
    assert "compilation cache" not in result.stdout
