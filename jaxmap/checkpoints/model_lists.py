"""Model lists: files naming many models, and the references that stand for many.

:func:`expand_references` turns what a person passes to ``jaxmap score`` into one reference per
model: a list file (one reference a line, or a YAML list) into its entries, a training run's
directory or a glob pattern into its checkpoints in step order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import yaml

from ..errors import CheckpointError
from .orbax import expand_checkpoint_sequence

__all__ = ["expand_references", "read_model_list"]

_LIST_SUFFIXES = {".txt", ".yaml", ".yml", ".list"}


def _list_entry(entry, where: str) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        for key in ("model", "name", "id", "repo_id", "path"):
            if isinstance(entry.get(key), str):
                revision = entry.get("revision")
                return f"{entry[key]}@{revision}" if revision else entry[key]
    raise CheckpointError(f"{where}: cannot read a model reference from {entry!r}")


def read_model_list(path: Path) -> list[str]:
    """Model references from a list file: one per line (``#`` comments) or a YAML list."""
    text = path.read_text()
    if path.suffix in {".yaml", ".yml"}:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CheckpointError(f"{path}: not valid YAML ({error})") from None
        if isinstance(data, dict) and "models" in data:
            data = data["models"]
        if not isinstance(data, list):
            raise CheckpointError(f"{path}: expected a YAML list of models")
        return [_list_entry(entry, f"{path} entry {i + 1}") for i, entry in enumerate(data)]
    references = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            references.append(line)
    return references


def expand_references(references: Iterable[str]) -> list[str]:
    """Replace list files by the references they hold, a training run's directory by its
    checkpoints in step order, and a glob pattern that names no file (``'run/step_*'``, quoted
    so that jaxmap expands it) by its matches in step order; keep order, drop repeats."""
    out: list[str] = []
    for reference in references:
        path = Path(reference).expanduser()
        if path.is_file() and path.suffix in _LIST_SUFFIXES:
            items = read_model_list(path)
        else:
            items = expand_checkpoint_sequence(reference) or [reference]
        for item in items:
            if item not in out:
                out.append(item)
    return out
