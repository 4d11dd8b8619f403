"""Writing the converted weights: a float32 safetensors file, streamed tensor by tensor."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def write_safetensors(
    path: Path, shapes: dict[str, tuple[int, ...]], tensors: Iterator[tuple[str, np.ndarray]]
) -> None:
    """Stream float32 tensors into a safetensors file, one tensor in memory at a time.

    The header is written first from the shapes, so the file never needs the whole model in
    memory (0.5B parameters would be 2 GB of float32 twice over with ``save_file``). ``tensors``
    must yield the names of ``shapes`` in its order.
    """
    order = list(shapes)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in order:
        size = int(np.prod(shapes[name], dtype=np.int64)) * 4
        header[name] = {"dtype": "F32", "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    position = {name: index for index, name in enumerate(order)}
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for expected_index, (name, array) in enumerate(tensors):
            if position.get(name) != expected_index or tuple(array.shape) != shapes[name]:
                raise AssertionError(f"tensor {name} arrived out of order or with the wrong shape")
            handle.write(np.ascontiguousarray(array, dtype="<f4").tobytes())
