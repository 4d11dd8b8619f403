"""Device meshes and the placement of a decoder's params on them.

A mesh has a ``data`` axis (batch rows) and a ``model`` axis (tensor-parallel weights). The
partitioning is named once per logical axis of the params layout (:data:`TENSOR_PARALLEL`; each
parameter's axes are in :mod:`jaxmap.models.layout`), whatever the architecture: attention heads
and MLP columns are split Megatron-style (q/k/v/gate/up by output column, o/down by input row, so
each attention and each MLP ends in one all-reduce), and the vocabulary rows of the embedding and
unembedding (and of the output-projection bias, if any) are split for the sharded log-prob
kernel. Everything else is replicated. Params are replicated over the data axis.

Host arrays in their final layout and dtype go to the devices with one ``jax.device_put`` per
parameter, straight into its :class:`~jax.sharding.NamedSharding` (when the mesh spans several
processes, each process hands over its own devices' slices instead).
"""

from __future__ import annotations

import re
from typing import Callable

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .errors import JaxmapError
from .models.decoder import DecoderConfig, Params
from .models.layout import LAYOUT
from .models.weights import empty_host_array

DATA = "data"
MODEL = "model"

# The logical axes of the params layout that are split over the model axis, each with the number
# of whole pieces it holds (a head is never cut in two). A layer's o.bias and down.bias lie along
# "embed": they are added after the row-parallel all-reduce, so they stay replicated like the
# norms. Mixture of experts: every device holds every expert's slice of columns (Megatron-style
# within each expert), so routing needs no communication and each MoE MLP ends in one
# all-reduce like a dense one; the router and the shared expert's gate stay replicated.
TENSOR_PARALLEL: dict[str, Callable[[DecoderConfig], int]] = {
    "vocab": lambda config: config.vocab_size,
    "heads": lambda config: config.num_heads,
    "v_heads": lambda config: config.num_heads,
    "kv_heads": lambda config: config.num_kv_heads,
    "mlp": lambda config: config.intermediate_size,
    "dense_mlp": lambda config: config.dense_intermediate_size,
    "expert_mlp": lambda config: config.expert_intermediate_size,
}

_MESH_ITEM = re.compile(r"\s*(data|model)\s*=\s*(\d+)\s*")


class MeshError(JaxmapError, ValueError):
    """A mesh specification that cannot be read or built on the run's devices."""


def parse_mesh(spec: str) -> dict[str, int]:
    """``"data=D,model=M"`` (either part optional, any order) as ``{"data": D, "model": M}``."""
    sizes: dict[str, int] = {}
    for item in spec.split(",") if spec.strip() else []:
        match = _MESH_ITEM.fullmatch(item)
        if not match:
            raise MeshError(
                f"mesh {spec!r}: cannot read {item.strip()!r}; write data=D,model=M with "
                "positive integers (either part may be left out)"
            )
        name, size = match.group(1), int(match.group(2))
        if name in sizes:
            raise MeshError(f"mesh {spec!r}: axis {name!r} is given twice")
        if size < 1:
            raise MeshError(f"mesh {spec!r}: axis {name!r} must be at least 1")
        sizes[name] = size
    return sizes


def make_mesh(spec: str | Mesh | None = None, devices: list | None = None) -> Mesh:
    """A (data, model) mesh over ``devices`` (default: every device of the run, which are this
    process's local devices unless ``jax.distributed`` joined several processes).

    ``None`` or an empty string: every device on the data axis, model = 1. A missing ``model``
    is 1; a missing ``data`` takes the devices left over by the model axis. A :class:`Mesh` is
    returned as it is when it has both axes.
    """
    if isinstance(spec, Mesh):
        if set(spec.axis_names) != {DATA, MODEL}:
            raise MeshError(f"a jaxmap mesh has axes ('data', 'model'), not {spec.axis_names}")
        return spec
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec or "")
    model = sizes.get(MODEL, 1)
    data = sizes.get(DATA, len(devices) // model)
    if data < 1 or data * model > len(devices):
        raise MeshError(
            f"mesh {spec!r} needs {max(data, 1) * model} devices, the run has "
            f"{len(devices)} ({devices[0].platform})"
        )
    # The model axis is the minor one, so its all-reduces (two per layer) run between
    # neighbouring devices; create_device_mesh knows the interconnect on TPUs and GPUs.
    grid = mesh_utils.create_device_mesh((data, model), devices[: data * model])
    return Mesh(grid, (DATA, MODEL))


def describe_mesh(mesh: Mesh) -> str:
    """``"data=D,model=M"``: the spec that rebuilds this mesh's shape."""
    return f"data={mesh.shape[DATA]},model={mesh.shape[MODEL]}"


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Token batches [rows, length]: rows split over the data axis."""
    return NamedSharding(mesh, P(DATA, None))


def row_sharding(mesh: Mesh) -> NamedSharding:
    """One value per batch row [rows] (such as the rows' lengths): split over the data axis."""
    return NamedSharding(mesh, P(DATA))


def padded_vocabulary(vocab_size: int, mesh: Mesh) -> int:
    """The vocabulary rounded up to a multiple of the model axis (the embedding's row count)."""
    shards = mesh.shape[MODEL]
    return -(-vocab_size // shards) * shards


def put(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """One host array (the same on every process) onto ``sharding``, in one transfer."""
    if sharding.is_fully_addressable:
        return jax.device_put(host, sharding)
    # Across processes each one supplies its own devices' slices; device_put would first
    # compare the whole array between processes.
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_host(array: jax.Array) -> np.ndarray:
    """All of ``array`` as a numpy array on this process, gathered from other processes if
    some of its shards live there."""
    if array.is_fully_addressable:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _split_axes(path: str) -> tuple[str | None, ...]:
    """The logical axis of each dimension of the parameter at dotted ``path``, each one that is
    not split over the model axis as None (an unknown path: ())."""
    param = LAYOUT.get(path)
    return tuple(axis if axis in TENSOR_PARALLEL else None for axis in param.axes) if param else ()


def partition_spec(path: str, config: DecoderConfig, mesh: Mesh) -> P:
    """The partition of the parameter at dotted ``path`` (e.g. ``layers.q.kernel``)."""
    axes = _split_axes(path)
    split = [axis for axis in axes if axis is not None]
    if not split or mesh.shape[MODEL] == 1:
        return P()
    # Heads and MLP columns that do not divide the model axis are replicated instead: with MQA
    # or few GQA kv heads, k and v are then computed whole on every model shard while q and o
    # stay split (a head is never cut in two). The vocabulary is padded instead (see
    # padded_vocabulary), so the embedding is always split.
    (counted,) = split
    if counted != "vocab" and TENSOR_PARALLEL[counted](config) % mesh.shape[MODEL]:
        return P()
    return P(*(MODEL if axis == counted else None for axis in axes))


def place_params(host: Params, config: DecoderConfig, mesh: Mesh) -> Params:
    """Put host (numpy) params, already in their final layout and dtype, onto ``mesh``.

    One ``jax.device_put`` per parameter, straight into its sharding; vocabulary rows are
    padded with zeros to a multiple of the model axis first. ``host`` is emptied as it goes, so
    each host array can be freed as soon as it is placed (on CPU, where device memory is host
    memory, that keeps the peak near one copy of the model).
    """
    vocab = padded_vocabulary(config.vocab_size, mesh)

    def place(tree: dict, prefix: str) -> dict:
        placed = {}
        for name in list(tree):
            leaf = tree.pop(name)
            path = f"{prefix}{name}"
            if isinstance(leaf, dict):
                placed[name] = place(leaf, f"{path}.")
                continue
            if _split_axes(path)[:1] == ("vocab",) and leaf.shape[0] < vocab:
                padded = empty_host_array((vocab, *leaf.shape[1:]), leaf.dtype)
                padded[: leaf.shape[0]] = leaf
                padded[leaf.shape[0] :] = 0
                leaf = padded
                del padded
            spec = partition_spec(path, config, mesh)
            placed[name] = put(leaf, NamedSharding(mesh, spec))
            del leaf
        return placed

    return place(host, "")


__all__ = [
    "DATA",
    "MODEL",
    "TENSOR_PARALLEL",
    "MeshError",
    "batch_sharding",
    "describe_mesh",
    "make_mesh",
    "padded_vocabulary",
    "parse_mesh",
    "partition_spec",
    "place_params",
    "put",
    "row_sharding",
    "to_host",
]
