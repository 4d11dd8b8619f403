"""Rotary position embeddings: one rope parameter dict (transformers 5's ``rope_parameters``, or
the v4 ``rope_theta``/``rope_scaling`` fields) turned into the decoder's :class:`RopeTable`, as
transformers 5 computes each rope type."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import UnsupportedModelError
from .config_reader import ConfigReader
from .decoder import RopeTable


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


def yarn_softmax_scale(params: dict, scale: float) -> float:
    """``scale`` (a softmax scale, qk_head_dim ** -0.5) with YaRN's ``mscale_all_dim`` folded in
    twice, as transformers' ``yarn_apply_mscale`` does for latent attention (DeepSeek): for any
    rope type but the default one that gives ``mscale_all_dim``."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    mscale_all_dim = params.get("mscale_all_dim") or 0
    if rope_type == "default" or not mscale_all_dim:
        return scale
    if params.get("factor") is None:
        raise UnsupportedModelError(f"rope type {rope_type!r} with mscale_all_dim needs rope parameter 'factor'")
    mscale = _yarn_mscale(params["factor"], mscale_all_dim)
    return scale * mscale * mscale


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
