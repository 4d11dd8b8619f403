"""What every architecture adapter shares: strict config reading, rope tables, weight access.

An adapter is two functions: ``translate(ConfigReader) -> DecoderConfig``, which takes every
config field it understands and refuses the rest by name, and ``convert(WeightSource,
DecoderConfig, dtype) -> Params``, which maps Hugging Face tensor names onto the decoder's pytree.

Weights are assembled on the host, as numpy arrays in their final layout and dtype (transposed,
stacked over layers, cast; ``ml_dtypes`` gives numpy bfloat16), so that placing them on devices
is one transfer per parameter (:func:`jaxmap.sharding.place_params`) and no device ever holds a
second, unconverted copy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import jax
import numpy as np

from ..errors import UnsupportedModelError
from .decoder import DecoderConfig, Params, RopeTable

# Fields that do not change the log-likelihood of a text: bookkeeping, training-only settings
# (dropout, initialisation), generation defaults and token ids (handled by the tokenizer).
_NEUTRAL_FIELDS = frozenset(
    """
    _name_or_path architectures model_type transformers_version torch_dtype dtype use_cache
    initializer_range initializer_factor pad_token_id bos_token_id eos_token_id sep_token_id
    decoder_start_token_id attention_dropout hidden_dropout resid_pdrop embd_pdrop attn_pdrop
    classifier_dropout hidden_dropout_prob attention_probs_dropout_prob tokenizer_class
    output_attentions output_hidden_states return_dict use_return_dict id2label label2id
    problem_type task_specific_params chunk_size_feed_forward pruned_heads torchscript
    max_length min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty
    temperature top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size
    encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens prefix
    finetuning_task cross_attention_hidden_size add_cross_attention is_encoder_decoder
    tie_encoder_decoder is_decoder auto_map pretraining_tp summary_type summary_use_proj
    summary_activation summary_proj_to_labels summary_first_dropout use_bfloat16 tf_legacy_loss
    cache_implementation
    """.split()
)


# Sizes and counts: a value other than a positive integer is a broken config, not a variant.
_POSITIVE_INTEGERS = frozenset(
    """
    vocab_size hidden_size n_embd n_embed d_model word_embed_proj_dim num_hidden_layers n_layer
    n_layers num_layers num_attention_heads n_head n_heads num_heads attention_heads
    num_key_value_heads num_kv_heads head_dim intermediate_size n_inner ffn_dim ffn_hidden_size
    moe_intermediate_size shared_expert_intermediate_size num_experts num_local_experts
    num_experts_per_tok max_position_embeddings n_positions max_seq_len
    """.split()
)
# The architectures' spellings of the model width, the attention heads and the key/value heads:
# heads must divide the width (unless the config gives head_dim), key/value heads the heads.
_SHAPE_FIELDS = {
    "width": frozenset(("hidden_size", "n_embd", "n_embed", "d_model")),
    "heads": frozenset(("num_attention_heads", "n_head", "n_heads", "num_heads", "attention_heads")),
    "kv_heads": frozenset(("num_key_value_heads", "num_kv_heads")),
}


class ConfigReader:
    """Reads a Hugging Face config dict, tracking which fields the adapter understood.

    Values are checked as they are taken, before the adapter computes with them: a size that is
    not a positive integer, heads that do not divide the width, and aliases that disagree are
    refused naming the fields and their values.
    """

    def __init__(self, config: dict, architecture: str) -> None:
        self.config = dict(config)
        self.architecture = architecture
        self._taken: set[str] = set()
        # _SHAPE_FIELDS role -> (field, value) of the ones taken so far.
        self._shape: dict[str, tuple[str, Any]] = {}

    def has(self, name: str) -> bool:
        return self.config.get(name) is not None

    def take(self, name: str, default: Any = ...) -> Any:
        """The field's value (``default`` when absent or null); missing without default fails."""
        self._taken.add(name)
        value = self.config.get(name)
        if value is None:
            if default is ...:
                raise UnsupportedModelError(
                    f"{self.architecture}: config field {name!r} is required but missing"
                )
            return default
        return self._checked(name, value)

    def take_first(self, names: Iterable[str], default: Any = ...) -> Any:
        """The value of a field that configs spell several ways (e.g. ``n_embd`` /
        ``hidden_size``, transformers' ``attribute_map``); where several are present they must
        agree."""
        names = list(names)
        for name in names:
            self._taken.add(name)
        present = [name for name in names if self.config.get(name) is not None]
        if not present:
            if default is ...:
                raise UnsupportedModelError(
                    f"{self.architecture}: config needs one of the fields {', '.join(names)}"
                )
            return default
        first = present[0]
        value = self._checked(first, self.config[first])
        for other in present[1:]:
            self.take_copy(other, first, value)
        return value

    def take_copy(self, name: str, source: str, value: Any) -> None:
        """Accept ``name``, a field that restates ``value``, the value jaxmap reads or derives
        from the field ``source`` (transformers writes both, e.g. Falcon's
        ``num_key_value_heads`` beside ``num_kv_heads``); a different value contradicts
        ``source`` and is refused naming both."""
        self._taken.add(name)
        saved = self.config.get(name)
        if saved is None or saved == value:
            return
        given = self.config.get(source)
        means = "" if given == value else f", which means {value!r}"
        raise UnsupportedModelError(
            f"{self.architecture}: config field {name!r} = {saved!r} contradicts "
            f"{source!r} = {given!r}{means}"
        )

    def _checked(self, name: str, value: Any) -> Any:
        """``value`` of field ``name``, after the checks of sizes and head counts."""
        if name in _POSITIVE_INTEGERS and (
            not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1
        ):
            raise UnsupportedModelError(
                f"{self.architecture}: config field {name!r} = {value!r} is not a positive integer"
            )
        for role, names in _SHAPE_FIELDS.items():
            if name in names:
                self._shape[role] = (name, value)
        width, heads, kv_heads = (self._shape.get(role) for role in _SHAPE_FIELDS)
        if width and heads and not self.has("head_dim") and width[1] % heads[1]:
            raise self._indivisible(width, heads, "the attention heads must divide the width")
        if heads and kv_heads and heads[1] % kv_heads[1]:
            raise self._indivisible(
                heads, kv_heads, "the key/value heads must divide the attention heads"
            )
        return value

    def _indivisible(self, whole: tuple[str, Any], part: tuple[str, Any], why: str):
        return UnsupportedModelError(
            f"{self.architecture}: config fields {whole[0]!r} = {whole[1]!r} and "
            f"{part[0]!r} = {part[1]!r}: {why}"
        )

    def expect(self, name: str, allowed: Iterable[Any], default: Any = None) -> Any:
        """Take a field that jaxmap implements only for some values; refuse the others."""
        allowed = list(allowed)
        value = self.take(name, default)
        if value not in allowed:
            raise self.refuse(name, value, f"jaxmap implements only {allowed}")
        return value

    def refuse(self, name: str, value: Any, why: str = "") -> UnsupportedModelError:
        detail = f": {why}" if why else ""
        return UnsupportedModelError(
            f"{self.architecture}: unsupported config field {name!r} = {value!r}{detail}"
        )

    def finish(self) -> None:
        """Refuse, by name, every field nobody took that could change the model's output."""
        unknown = sorted(
            name
            for name, value in self.config.items()
            if name not in self._taken and name not in _NEUTRAL_FIELDS and value is not None
        )
        if unknown:
            shown = ", ".join(f"{name}={self.config[name]!r}" for name in unknown)
            raise UnsupportedModelError(
                f"{self.architecture}: config fields not implemented by jaxmap: {shown}"
            )


# ---------------------------------------------------------------------------------------------
# Activations

ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}


def activation(reader: ConfigReader, *names: str) -> str:
    """Map an HF activation name onto the decoder's, refusing ones it lacks."""
    name = reader.take_first(names)
    if name not in ACTIVATIONS:
        raise reader.refuse(names[0], name, f"jaxmap implements {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings


def _default_inv_freq(theta: float, dim: int) -> np.ndarray:
    # float32 like HF, so the angles match to the last bit where possible.
    return (np.float32(1.0) / (np.float32(theta) ** _exponents(dim))).astype(np.float32)


def _exponents(dim: int) -> np.ndarray:
    """``arange(0, dim, 2) / dim`` in float32, as transformers computes it."""
    return np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)


class _RopeParams:
    """One rope parameter dict, read for one rope type; a missing required value names itself."""

    def __init__(self, params: dict, rope_type: str, where: str) -> None:
        self.params, self.rope_type, self.where = params, rope_type, where

    def need(self, name: str) -> Any:
        if self.params.get(name) is None:
            raise UnsupportedModelError(
                f"{self.where}: rope type {self.rope_type!r} needs rope parameter {name!r}"
            )
        return self.params[name]

    def get(self, name: str, default: Any = None) -> Any:
        value = self.params.get(name)
        return default if value is None else value


def _llama3_inv_freq(inv_freq: np.ndarray, params: _RopeParams, old_context: int) -> np.ndarray:
    factor = params.need("factor")
    low, high = params.need("low_freq_factor"), params.need("high_freq_factor")
    wavelength = 2 * math.pi / inv_freq
    scaled = np.where(wavelength > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelength < old_context / high) & ~(wavelength > old_context / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(
    params: _RopeParams, theta: float, dim: int, max_positions: int, old_context: int
) -> tuple[np.ndarray, float]:
    """YaRN's frequencies and attention factor, step for step as transformers'
    ``_compute_yarn_parameters`` (float32 tensors, float64 scalars)."""
    factor = params.get("factor")
    if factor is None:
        factor = max_positions / old_context
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    # transformers reads 0 as "unset" here (``or``), so do the same.
    beta_fast = params.params.get("beta_fast") or 32
    beta_slow = params.params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        # The dimension whose wavelength turns ``rotations`` times over the original context.
        return dim * math.log(old_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    # transformers reads an explicit null as false here.
    if params.params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers does, against a division by zero
    ramp = np.clip(
        (np.arange(dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1
    ).astype(np.float32)
    extrapolation_share = np.float32(1) - ramp
    position_freqs = np.float32(theta) ** _exponents(dim)
    extrapolated = np.float32(1) / position_freqs
    interpolated = np.float32(1) / (np.float32(factor) * position_freqs)
    inv_freq = interpolated * (np.float32(1) - extrapolation_share) + extrapolated * extrapolation_share
    return inv_freq.astype(np.float32), float(attention_factor)


def _longrope(
    params: _RopeParams, theta: float, dim: int, max_positions: int, old_context: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """LongRoPE's short and long frequencies and its attention factor, as transformers'
    ``_compute_longrope_parameters``."""
    factor = params.get("factor")
    if factor is None:
        factor = max_positions / old_context
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(old_context))
        )
    shape = np.float32(theta) ** _exponents(dim)
    tables = []
    for name in ("short_factor", "long_factor"):
        factors = np.asarray(params.need(name), np.float32)
        if factors.shape != shape.shape:
            raise UnsupportedModelError(
                f"{params.where}: rope parameter {name!r} has {factors.size} entries; the rotary "
                f"dimension {dim} needs {shape.size}"
            )
        tables.append((np.float32(1) / (factors * shape)).astype(np.float32))
    return tables[0], tables[1], float(attention_factor)


_ROPE_KEYS = {
    "default": {"rope_type", "type", "rope_theta", "partial_rotary_factor"},
    "linear": {"factor"},
    # transformers ignores original_max_position_embeddings for dynamic NTK (it warns): the
    # context the base grows from is max_position_embeddings.
    "dynamic": {"factor", "original_max_position_embeddings"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {
        "factor", "original_max_position_embeddings", "attention_factor", "beta_fast",
        "beta_slow", "mscale", "mscale_all_dim", "truncate",
    },
    "longrope": {"short_factor", "long_factor", "original_max_position_embeddings", "attention_factor", "factor"},
}


def rope_table(
    params: dict, rotary_dim: int, max_positions: int, where: str
) -> tuple[RopeTable, int]:
    """Translate one rope parameter dict (HF v5 ``rope_parameters`` form) as transformers 5
    computes it.

    Returns the table and the longest sequence this model scores: ``max_positions``
    (``max_position_embeddings``), except for dynamic NTK scaling, which exists to go past it
    and is scored up to ``factor`` times as far (each longer text with the base transformers
    recomputes from that text's length).
    """
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_KEYS:
        raise UnsupportedModelError(
            f"{where}: unsupported rope type {rope_type!r} (jaxmap implements "
            f"{', '.join(_ROPE_KEYS)})"
        )
    extra = set(params) - _ROPE_KEYS["default"] - _ROPE_KEYS[rope_type]
    if extra:
        raise UnsupportedModelError(
            f"{where}: rope parameter(s) {', '.join(sorted(extra))} not implemented for "
            f"rope type {rope_type!r}"
        )
    read = _RopeParams(params, rope_type, where)
    theta = read.need("rope_theta")
    # transformers fills in max_position_embeddings where these types lack their own.
    old_context = int(read.get("original_max_position_embeddings", max_positions))
    inv_freq = _default_inv_freq(theta, rotary_dim)
    if rope_type == "linear":
        return RopeTable(_floats(inv_freq / np.float32(read.need("factor")))), max_positions
    if rope_type == "llama3":
        return RopeTable(_floats(_llama3_inv_freq(inv_freq, read, old_context))), max_positions
    if rope_type == "yarn":
        inv_freq, attention_factor = _yarn(read, theta, rotary_dim, max_positions, old_context)
        return RopeTable(_floats(inv_freq), attention_factor), max_positions
    if rope_type == "longrope":
        short, long, attention_factor = _longrope(read, theta, rotary_dim, max_positions, old_context)
        table = RopeTable(
            _floats(short), attention_factor, original_context=old_context, long_inv_freq=_floats(long)
        )
        return table, max_positions
    if rope_type == "dynamic":
        factor = float(read.need("factor"))
        if rotary_dim <= 2:
            raise UnsupportedModelError(f"{where}: dynamic rope scaling needs a rotary dimension above 2")
        # Within max_position_embeddings, transformers keeps the frequencies computed at load,
        # from the base grown for exactly that length.
        grown = theta * ((factor * max_positions / max_positions) - (factor - 1)) ** (
            rotary_dim / (rotary_dim - 2)
        )
        table = RopeTable(
            _floats(_default_inv_freq(grown, rotary_dim)),
            original_context=max_positions, ntk_factor=factor, theta=float(theta),
        )
        return table, max(max_positions, int(max_positions * factor))
    return RopeTable(_floats(inv_freq)), max_positions


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(value) for value in values)


def read_rope_parameters(reader: ConfigReader, default_theta: float = 10000.0) -> dict:
    """The rope parameter dict, from HF v5 ``rope_parameters`` or v4 ``rope_theta``/``rope_scaling``."""
    if reader.has("rope_parameters"):
        params = dict(reader.take("rope_parameters"))
        params.setdefault("rope_theta", reader.take("rope_theta", default_theta))
    else:
        params = dict(reader.take("rope_scaling", {}))
        params["rope_theta"] = reader.take("rope_theta", default_theta)
    return params


# ---------------------------------------------------------------------------------------------
# Weights

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
    """``tensor`` as a C-contiguous, 64-byte-aligned numpy array of ``dtype`` (copied and cast
    unless it is one already)."""
    tensor = np.asarray(tensor)
    dtype = np.dtype(dtype)
    if tensor.dtype == dtype and tensor.flags.c_contiguous and not tensor.ctypes.data % _ALIGNMENT:
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
            stack[index] = leaf
        # Free this layer's tensors before the next layer is read.
        del leaves
    return jax.tree.unflatten(structure, stacks)


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
    unembed: str | np.ndarray,
    ignorable: Iterable[str] = (),
    extra: dict | None = None,
) -> Params:
    """The decoder's params, as host arrays, from per-layer params ``layer(i)`` and the named
    outer tensors.

    ``embed`` and ``unembed`` name checkpoint tensors, or are matrices the adapter assembled
    itself (OPT folds its projections into them). Refuses checkpoint tensors nobody read
    (besides the ``ignorable`` patterns and a tied ``unembed``) and checks the embedding's shape.
    """

    def matrix(source: str | np.ndarray) -> np.ndarray:
        return weights(source, dtype) if isinstance(source, str) else host_array(source, dtype)

    params = {
        "embed": matrix(embed),
        "final_norm": final_norm,
        "layers": stack_layers(layer, config.num_layers),
        **(extra or {}),
    }
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


def _check_shapes(params: Params, config: DecoderConfig) -> Params:
    """Sanity-check the shapes that the decoder relies on."""
    embed = params["embed"]
    if embed.shape != (config.vocab_size, config.hidden_size):
        raise UnsupportedModelError(
            f"embedding has shape {tuple(embed.shape)}, config says "
            f"({config.vocab_size}, {config.hidden_size})"
        )
    return params
