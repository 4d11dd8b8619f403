"""Cheap checks of a resolved checkpoint, before anything is scored.

A 1,000-model job should learn about a broken model in seconds, not when its turn comes hours
later. These checks read config.json, the tokenizer files, the shard index and the safetensors
headers only (never tensor data): a config that is not a JSON object or that the port cannot
translate, a missing or unreadable tokenizer, a truncated or garbage weight file, a header whose
shapes, dtypes or offsets do not add up to the file's size, a shard index naming tensors no shard
holds. Each failure is one :class:`~jaxmap.errors.CheckpointError` line naming the model and the
file (an unsupported architecture or config field, or an impossible config value such as a size
that is not a positive integer or heads that do not divide the width, is an
:class:`~jaxmap.errors.UnsupportedModelError` naming the field and its value).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError

if TYPE_CHECKING:
    from . import Checkpoint

__all__ = ["INDEX_FILE", "read_json_object", "read_shard_index", "safetensors_header", "validate", "validate_weights"]

# Bytes per element of the dtypes jaxmap reads (numpy, with ml_dtypes for bfloat16).
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4,
    "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
# Dtypes safetensors knows that have no numpy type: quantized checkpoints jaxmap does not read.
_UNREADABLE = {"F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4"}
# A safetensors header larger than this is not one (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000
# What the tokenizer loader can use, in its order of preference: the fast tokenizer, else the
# slow-tokenizer files AutoTokenizer converts (sentencepiece; byte-level BPE).
_TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))
INDEX_FILE = "model.safetensors.index.json"


def read_json_object(path: Path, reference: str) -> dict:
    """The JSON object in ``path``; anything else is one line naming the model and the file."""
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{reference}: {path.name} is not valid JSON ({error})") from None
    except OSError as error:
        raise CheckpointError(f"{reference}: cannot read {path.name} ({error.strerror or error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{reference}: {path.name} holds a JSON {_json_kind(data)}, not an object")
    return data


def _json_kind(value) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def read_shard_index(directory: Path, reference: str) -> dict[str, str] | None:
    """The ``weight_map`` (tensor name → shard file) of a shard index, or None without one."""
    path = directory / INDEX_FILE
    if not path.exists():
        return None
    weight_map = read_json_object(path, reference).get("weight_map")
    # Shard names stay inside the checkpoint: an index must not point at arbitrary files.
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.endswith(".safetensors")
        and not Path(v).is_absolute() and ".." not in Path(v).parts
        for k, v in weight_map.items()
    ):
        raise CheckpointError(
            f"{reference}: {INDEX_FILE} is not a shard index (no weight_map of tensor names to .safetensors files in its directory)"
        )
    return weight_map


def safetensors_header(path: Path, reference: str) -> dict:
    """The parsed header of a safetensors file, checked against the file's size.

    Checks that the 8-byte little-endian length and the JSON header fit in the file, that every
    tensor has a dtype jaxmap reads, a shape and data offsets of the size that shape needs, that
    the tensors tile the data area without gaps or overlaps, and that the file ends where the last
    tensor does. Reads the header only.
    """
    where = f"{reference}: {path.name}"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{where}: {size} bytes, too short for a safetensors file")
            length = int.from_bytes(prefix, "little")
            if length > size - 8:
                raise CheckpointError(
                    f"{where}: not a safetensors file (header length {length} past the end of "
                    f"the {size}-byte file)"
                )
            if length > _MAX_HEADER:
                raise CheckpointError(f"{where}: not a safetensors file (a {length}-byte header)")
            raw = handle.read(length)
    except OSError as error:
        raise CheckpointError(f"{where}: cannot read ({error.strerror or error})") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{where}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: not a safetensors file (its header is not a JSON object)")
    spans = sorted(
        (_tensor_span(where, name, entry), name) for name, entry in header.items() if name != "__metadata__"
    )
    end = 0
    for (begin, stop), name in spans:
        if begin != end:
            problem = "overlaps the tensor before it" if begin < end else f"leaves a gap at byte {end}"
            raise CheckpointError(f"{where}: tensor {name!r} (data_offsets [{begin}, {stop}]) {problem}")
        end = stop
    if 8 + length + end != size:
        raise CheckpointError(
            f"{where}: the file has {size} bytes but its header describes {8 + length + end}; "
            "it is truncated or damaged (download it again)"
        )
    return header


def _tensor_span(where: str, name: str, entry) -> tuple[int, int]:
    """A header entry's ``(begin, end)`` data offsets, after checking dtype and shape agree."""
    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: tensor {name!r} has a malformed header entry (not an object)")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(integer(n) for n in shape):
        raise CheckpointError(f"{where}: tensor {name!r} has a malformed shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(integer(n) for n in offsets) or offsets[0] > offsets[1]:
        raise CheckpointError(f"{where}: tensor {name!r} has malformed data_offsets {offsets!r}")
    if dtype in _UNREADABLE:
        raise CheckpointError(
            f"{where}: tensor {name!r} has dtype {dtype}, which jaxmap cannot read "
            "(quantized safetensors checkpoints are not supported)"
        )
    if dtype not in _DTYPE_BYTES:
        raise CheckpointError(f"{where}: tensor {name!r} has an unknown dtype {dtype!r}")
    begin, stop = offsets
    needed = math.prod(shape) * _DTYPE_BYTES[dtype]
    if stop - begin != needed:
        raise CheckpointError(
            f"{where}: tensor {name!r} ({dtype} {shape}) spans {stop - begin} bytes, its shape needs {needed}"
        )
    return begin, stop


def _check_tokenizer(checkpoint: Checkpoint) -> None:
    reference, directory = checkpoint.reference, checkpoint.directory
    present = [names for names in _TOKENIZER_FILES if all((directory / n).is_file() for n in names)]
    if not present:
        raise CheckpointError(
            f"{reference}: no tokenizer files (tokenizer.json, tokenizer.model, or "
            f"vocab.json + merges.txt) in {directory}"
        )
    # The JSON files the tokenizer loader will read.
    chosen = ["vocab.json"] if present[0] == ("vocab.json", "merges.txt") else []
    for name in ["tokenizer.json", "tokenizer_config.json", *chosen]:
        if (directory / name).is_file():
            read_json_object(directory / name, reference)


def validate_weights(checkpoint: Checkpoint) -> None:
    """Check every safetensors header against its file, and the shard index against the headers.

    The weights must be on disk (for a hub model, after
    :meth:`~jaxmap.checkpoints.Checkpoint.fetch_weights`).
    """
    reference = checkpoint.reference
    files = checkpoint.weight_files()
    headers = {f.name: safetensors_header(f, reference) for f in files}
    weight_map = read_shard_index(checkpoint.directory, reference)
    if weight_map is not None:
        missing = sorted(name for name, shard in weight_map.items() if name not in headers.get(shard, {}))
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise CheckpointError(f"{reference}: {INDEX_FILE} names tensors its shards do not hold: {shown}")


def validate(checkpoint: Checkpoint) -> None:
    """Raise if ``checkpoint`` cannot be scored, with one line naming the model and the file.

    Checks config.json (a JSON object the port translates: architecture and every field) and the
    tokenizer files, then the weights as the checkpoint's source checks them
    (:meth:`~jaxmap.checkpoints.Resolver.check_weights`): the shard index and every safetensors
    header against its file's size, or an orbax checkpoint's saved tree against its config;
    reads no tensor data. A hub model's weights that have not been downloaded yet are checked
    against the hub's file listing here, and their headers when they arrive
    (:meth:`~jaxmap.checkpoints.Checkpoint.fetch_weights`).

    Raises:
        CheckpointError: a missing, damaged or inconsistent file.
        UnsupportedModelError: an architecture or config field jaxmap does not implement, or a
            config value no model can have.
    """
    from .translated import translated_config

    translated_config(checkpoint)
    _check_tokenizer(checkpoint)
    checkpoint.resolver.check_weights(checkpoint)
