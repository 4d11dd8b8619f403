"""Reading a GGUF file: its metadata as Python values and its tensors, with errors naming it."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import GGUFConversionError

_REQUIRED = object()


@dataclass
class GGUFSource:
    """The parsed GGUF file: metadata as Python values, the tensors, and the file for errors."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, Any]  # gguf name -> gguf.ReaderTensor
    architecture: str

    def fail(self, message: str) -> GGUFConversionError:
        """An error naming the file and its architecture."""
        return GGUFConversionError(f"{self.path} (GGUF architecture {self.architecture!r}): {message}")

    def arch_value(self, name: str, default: Any = _REQUIRED) -> Any:
        """The metadata value ``<architecture>.<name>``; without a default, absence is an error."""
        key = f"{self.architecture}.{name}"
        if key in self.metadata:
            return self.metadata[key]
        if default is _REQUIRED:
            raise self.fail(f"metadata key {key!r} is missing")
        return default


def read_source(path: Path) -> GGUFSource:
    """Parse ``path`` (metadata eagerly, tensor data lazily through the file's memory map)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, struct.error) as error:
        raise GGUFConversionError(f"{path}: not a readable GGUF file ({error})") from None
    metadata = {name: field.contents() for name, field in reader.fields.items()}
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise GGUFConversionError(f"{path}: no general.architecture in the GGUF metadata")
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    return GGUFSource(path, metadata, tensors, architecture)


def float32_value(value: float) -> float:
    """The shortest decimal that reads back as the same float32.

    GGUF stores hyperparameters as float32, so 1e-5 arrives as 9.999999747378752e-06; this gives
    back the 1e-05 the original config held.
    """
    return float(str(np.float32(value)))
