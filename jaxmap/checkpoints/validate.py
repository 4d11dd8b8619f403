"""Cheap checks of a resolved checkpoint, before anything is scored.

A 1,000-model job should learn about a broken model in seconds, not when its turn comes hours
later. These checks read config.json, the tokenizer files and the safetensors headers only
(never tensor data): a truncated or garbage weight file, a shard index naming tensors no shard
holds, a config that is not a JSON object, a missing tokenizer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import CheckpointError

# Bytes per element of every dtype safetensors writes.
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
# A safetensors header larger than this is not one (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000
# What the tokenizer loader can use, in its order of preference.
_TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))


def safetensors_header(path: Path, reference: str) -> dict:
    """The parsed header of a safetensors file, checked against the file's size."""
    where = f"{reference}: {path.name}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{where}: {size} bytes, too short for a safetensors file")
            length = int.from_bytes(prefix, "little")
            if length > min(_MAX_HEADER, size - 8):
                raise CheckpointError(
                    f"{where}: not a safetensors file (header length {length} past the end of "
                    f"the {size}-byte file)"
                )
            raw = handle.read(length)
    except OSError as error:
        raise CheckpointError(f"{where}: cannot read ({error.strerror or error})") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{where}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: not a safetensors file (its header is not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            expected = math.prod(shape) * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: tensor {name!r} has a malformed header entry") from None
        if stop - begin != expected or begin < 0:
            raise CheckpointError(
                f"{where}: tensor {name!r} ({dtype} {shape}) spans {stop - begin} bytes, "
                f"its shape needs {expected}"
            )
        end = max(end, stop)
    if 8 + length + end != size:
        raise CheckpointError(
            f"{where}: the file has {size} bytes but its header describes {8 + length + end}; "
            "it is truncated or damaged (download it again)"
        )
    return header


def validate(checkpoint) -> None:
    """Raise :class:`CheckpointError` naming the file if the checkpoint cannot be loaded.

    Reads config.json, the tokenizer files and the safetensors headers; no tensor data. Weight
    files that are not on disk yet (a hub model whose weights download later) are skipped.
    """
    reference, directory = checkpoint.reference, checkpoint.directory
    checkpoint.config()
    present = [names for names in _TOKENIZER_FILES if all((directory / n).exists() for n in names)]
    if not present:
        raise CheckpointError(
            f"{reference}: no tokenizer files (tokenizer.json, tokenizer.model, or "
            f"vocab.json + merges.txt) in {directory}"
        )
    if present[0] == ("tokenizer.json",):
        try:
            json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{reference}: tokenizer.json is not valid JSON ({error})") from None
    if checkpoint.weights_pending:
        return
    files = checkpoint.weight_files()
    headers = {f.name: safetensors_header(f, reference) for f in files}
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = sorted(name for name, shard in weight_map.items() if name not in headers.get(shard, {}))
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise CheckpointError(
                f"{reference}: model.safetensors.index.json names tensors its shards do not hold: {shown}"
            )
