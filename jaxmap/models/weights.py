"""Checkpoint weights as the decoder's params: :class:`WeightSource` hands out named tensors and
refuses the ones nobody read; the helpers map torch linears and norms and stack layers.

Weights are assembled on the host, as numpy arrays in their final layout and dtype (transposed,
stacked over layers, cast; ``ml_dtypes`` gives numpy bfloat16), so that placing them on devices
is one transfer per parameter (:func:`jaxmap.sharding.place_params`) and no device ever holds a
second, unconverted copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import jax
import numpy as np

from ..errors import UnsupportedModelError
from .decoder import DecoderConfig, Params

# XLA's CPU backend adopts a numpy array as a device buffer without copying it when the data is
# 64-byte aligned (numpy's own allocations are 16-byte aligned): host-assembled weights then do
# not exist twice on a CPU host.
_ALIGNMENT = 64


def empty_host_array(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous numpy array whose data is 64-byte aligned."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + _ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def host_array(tensor: Any, dtype) -> np.ndarray:
    """``tensor`` as a C-contiguous numpy array of ``dtype``: itself if it is one already, else
    one copy, cast, into a 64-byte-aligned array.

    An array of the right dtype is not copied only to align it: a layer's tensors are copied
    into their stack anyway (:func:`stack_layers`), and placing a misaligned one copies it once
    (:func:`jaxmap.sharding.place_params`), as aligning it here would have.
    """
    tensor = np.asarray(tensor)
    dtype = np.dtype(dtype)
    if tensor.dtype == dtype and tensor.flags.c_contiguous:
        return tensor
    out = empty_host_array(tensor.shape, dtype)
    out[...] = tensor
    return out


@dataclass
class WeightSource:
    """Named tensors of one checkpoint; records which were used so leftovers can be refused."""

    tensors: Callable[[str], Any]
    names: frozenset[str]
    model: str = "<model>"
    used: set[str] = field(default_factory=set)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def __call__(self, name: str, dtype=np.float32) -> np.ndarray:
        """The tensor as a host array of ``dtype`` (numpy, or a JAX scalar type like
        ``jnp.bfloat16``)."""
        if name not in self.names:
            raise UnsupportedModelError(f"{self.model}: checkpoint has no tensor {name!r}")
        self.used.add(name)
        return host_array(self.tensors(name), dtype)

    def check_all_used(self, ignorable: Iterable[str] = ()) -> None:
        """Refuse tensors the port did not read: they may carry a feature it lacks."""
        patterns = [re.compile(p) for p in ignorable]
        left = sorted(
            n for n in self.names - self.used if not any(p.fullmatch(n) for p in patterns)
        )
        if left:
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            raise UnsupportedModelError(f"{self.model}: tensors jaxmap does not use: {shown}")


def stack_layers(layer: Callable[[int], dict], count: int) -> dict:
    """``layer(0) ... layer(count - 1)`` stacked into one pytree with a leading layer axis
    (for ``lax.scan``).

    Each leaf's stack is allocated once and filled layer by layer, so besides the stacks only
    one layer's tensors are alive at a time.
    """
    leaves, structure = jax.tree.flatten(layer(0))
    stacks = [empty_host_array((count, *leaf.shape), leaf.dtype) for leaf in leaves]
    for index in range(count):
        if index:
            leaves = structure.flatten_up_to(layer(index))
        for stack, leaf in zip(stacks, leaves):
            if leaf.shape != stack.shape[1:]:
                raise UnsupportedModelError(
                    f"layer {index} has a tensor of shape {tuple(leaf.shape)} where layer 0 "
                    f"has {tuple(stack.shape[1:])}"
                )
            _copy_into(stack[index], leaf)
        # Free this layer's tensors before the next layer is read.
        del leaves
    return jax.tree.unflatten(structure, stacks)


# Source rows per block of a transposing copy (see _copy_into): measured on a 2-core AMD EPYC,
# 8 to 32 rows copy 2 to 6 times faster than one strided copy of the whole transpose
# (float32 and bfloat16, 256 x 768 to 32000 x 4096), 16 being the best or near it throughout.
_TRANSPOSE_BLOCK_ROWS = 16


def _copy_into(slot: np.ndarray, leaf: np.ndarray) -> None:
    """``slot[...] = leaf``. A transposed matrix (a torch linear's kernel, a view of its
    ``[out, in]`` weight) is copied a block of its source rows at a time: numpy's copy of the
    whole transpose strides across the destination and misses the cache on every element."""
    source = leaf.T
    if leaf.ndim != 2 or leaf.flags.c_contiguous or not source.flags.c_contiguous:
        slot[...] = leaf
        return
    for start in range(0, source.shape[0], _TRANSPOSE_BLOCK_ROWS):
        stop = start + _TRANSPOSE_BLOCK_ROWS
        slot[:, start:stop] = source[start:stop].T


def torch_linear(
    weights: WeightSource, prefix: str, dtype, bias: bool | None = None
) -> dict:
    """A torch ``nn.Linear`` ([out, in] weight) as ``{kernel: [in, out], bias}``.

    ``bias=None`` takes the bias if the checkpoint has one. The kernel is a transposed view;
    stacking lays it out contiguously.
    """
    out = {"kernel": weights(f"{prefix}.weight", dtype).T}
    if bias or (bias is None and f"{prefix}.bias" in weights):
        out["bias"] = weights(f"{prefix}.bias")
    return out


def torch_linears(weights: WeightSource, dtype, bias: bool | None = None, **prefixes: str) -> dict:
    """Torch linears read as :func:`torch_linear` does, keyed by the decoder's names for them
    (``o=f"{attention}.out_proj"``, ``up=...``), in the order given."""
    return {name: torch_linear(weights, prefix, dtype, bias) for name, prefix in prefixes.items()}


def norm_params(weights: WeightSource, prefix: str, with_bias: bool, offset: float = 0.0) -> dict:
    """Norm weights in float32; ``offset`` folds in Gemma's ``(1 + w)`` scale."""
    out = {"scale": weights(f"{prefix}.weight") + offset}
    if with_bias:
        out["bias"] = weights(f"{prefix}.bias")
    return out


def assemble_params(
    weights: WeightSource,
    config: DecoderConfig,
    dtype,
    layer: Callable[[int], dict],
    embed: str | np.ndarray,
    final_norm: dict,
    unembed: str | np.ndarray = "lm_head.weight",
    ignorable: Iterable[str] = (),
    extra: dict | None = None,
) -> Params:
    """The decoder's params, as host arrays, from per-layer params ``layer(i)`` and the named
    outer tensors. The first ``config.dense_layers`` layers are stacked apart, as
    ``dense_layers`` (see :class:`DecoderConfig`).

    ``embed`` and ``unembed`` (by default ``lm_head.weight``) name checkpoint tensors, or are
    matrices the adapter assembled itself (OPT folds its projections into them). Refuses checkpoint tensors nobody read
    (besides the ``ignorable`` patterns and a tied ``unembed``) and checks the embedding's shape.
    """

    def matrix(source: str | np.ndarray) -> np.ndarray:
        return weights(source, dtype) if isinstance(source, str) else host_array(source, dtype)

    first = config.dense_layers
    params = {
        "embed": matrix(embed),
        "final_norm": final_norm,
        "layers": stack_layers(lambda i: layer(first + i), config.num_layers - first),
        **(extra or {}),
    }
    if first:
        params["dense_layers"] = stack_layers(layer, first)
    if not config.tie_embeddings:
        params["unembed"] = matrix(unembed)
    tied_name = (re.escape(unembed),) if isinstance(unembed, str) else ()
    weights.check_all_used((*ignorable, *tied_name))
    return _check_shapes(params, config)


def split_fused_qkv_per_head(weights: WeightSource, name: str, config: DecoderConfig, dtype) -> dict:
    """A fused q/k/v linear whose output rows are grouped per head as ``[q | k | v]`` (each
    head_dim wide), as GPT-NeoX and Bloom store it, split into the decoder's q, k and v."""
    heads, head_dim, width = config.num_heads, config.head_dim, config.hidden_size
    fused = torch_linear(weights, name, dtype)
    kernel = fused["kernel"].reshape(width, heads, 3, head_dim)
    bias = fused.get("bias")
    out = {}
    for index, part in enumerate("qkv"):
        out[part] = {"kernel": kernel[:, :, index, :].reshape(width, heads * head_dim)}
        if bias is not None:
            out[part]["bias"] = bias.reshape(heads, 3, head_dim)[:, index, :].reshape(-1)
    return out


def projections(weights: WeightSource, prefix: str, dtype) -> dict:
    """q/k/v/o and gate/up/down of a Llama-style layer (``self_attn.q_proj`` ... ``mlp.down_proj``)."""
    out = {
        name: torch_linear(weights, f"{prefix}.self_attn.{name}_proj", dtype)
        for name in ("q", "k", "v", "o")
    }
    out.update(
        {name: torch_linear(weights, f"{prefix}.mlp.{name}_proj", dtype) for name in ("gate", "up", "down")}
    )
    return out


def fairseq_projections(weights: WeightSource, prefix: str, dtype) -> dict:
    """q/k/v/o and up/down of a layer named as fairseq names it (``self_attn.q_proj`` ...
    ``self_attn.out_proj``, ``fc1``, ``fc2``), as OPT and XGLM checkpoints keep it."""
    attention = f"{prefix}.self_attn"
    return torch_linears(
        weights, dtype, q=f"{attention}.q_proj", k=f"{attention}.k_proj", v=f"{attention}.v_proj",
        o=f"{attention}.out_proj", up=f"{prefix}.fc1", down=f"{prefix}.fc2",
    )


def _check_shapes(params: Params, config: DecoderConfig) -> Params:
    """Sanity-check the shapes that the decoder relies on."""
    embed = params["embed"]
    if embed.shape != (config.vocab_size, config.hidden_size):
        raise UnsupportedModelError(
            f"embedding has shape {tuple(embed.shape)}, config says "
            f"({config.vocab_size}, {config.hidden_size})"
        )
    return params
