"""Quiet by default: a real ``jaxmap score`` run prints no third-party banner or warnings on
stderr (here with PyTorch hidden, as on a jaxmap user's machine, so that transformers announces
it is missing); ``jaxmap --verbose`` lets them through."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import save_random_model, tiny_llama_config

# Hide PyTorch as if it were not installed: transformers then prints its banner on import.
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; from jaxmap.cli import main; sys.exit(main())"


def _score(arguments: list[str], cwd) -> subprocess.CompletedProcess:
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for name in ("TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "PYTHONWARNINGS"):
        environment.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *arguments],
        capture_output=True, text=True, cwd=cwd, env=environment, timeout=600,
    )


def _noise(stderr: str) -> list[str]:
    # tqdm redraws its bars with carriage returns; each redraw is a line of its own.
    lines = [part.strip() for line in stderr.splitlines() for part in line.split("\r")]
    return [line for line in lines if "pytorch" in line.lower() or "warn" in line.lower()]


def test_score_is_quiet_unless_verbose(tmp_path):
    model = save_random_model(tmp_path / "tiny", tiny_llama_config(num_hidden_layers=1), seed=3)
    text_file = tmp_path / "texts.jsonl"  # two short texts: one batch shape to compile
    text_file.write_text('{"text": "Hello world."}\n{"text": "Call me Ishmael."}\n', encoding="utf-8")
    quiet = _score(["score", str(model), "--texts", str(text_file), "--out", str(tmp_path / "a.h5")], tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert _noise(quiet.stderr) == [], quiet.stderr
    loud = _score(
        ["--verbose", "score", str(model), "--texts", str(text_file), "--out", str(tmp_path / "b.h5")], tmp_path
    )
    assert loud.returncode == 0, loud.stderr
    # The same run, verbose: the banner the quiet run hid is there (so the check above can fail).
    assert any("PyTorch was not found" in line for line in _noise(loud.stderr)), loud.stderr
