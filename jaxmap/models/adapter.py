"""What every architecture adapter's config translation shares: one builder of the
:class:`DecoderConfig` fields that every architecture has, each read from the config field that
the architecture spells it with.

An adapter is two functions: ``translate(ConfigReader) -> DecoderConfig``, which takes every
config field it understands and refuses the rest by name (:mod:`.config_reader`, rope fields
through :mod:`.rope`), and ``convert(WeightSource, DecoderConfig, dtype) -> Params``, which maps
Hugging Face tensor names onto the decoder's pytree (:mod:`.weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .config_reader import ConfigReader
from .decoder import DecoderConfig, RopeTable

ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}


@dataclass(frozen=True)
class ConfigField:
    """A config field for :func:`decoder_config` to take: its name, or a tuple of the names one
    field goes by (taken as :meth:`ConfigReader.take_first` does), and its value where the config
    lacks it (none given: the field is required)."""

    name: str | tuple[str, ...]
    default: Any = ...

    def take(self, reader: ConfigReader) -> Any:
        """The field's value, read and checked by ``reader``."""
        if isinstance(self.name, str):
            return reader.take(self.name, self.default)
        return reader.take_first(self.name, self.default)


def _value(reader: ConfigReader, given: Any) -> Any:
    return given.take(reader) if isinstance(given, ConfigField) else given


def _activation(reader: ConfigReader, spelling: ConfigField) -> str:
    """Map the config's HF activation name onto the decoder's, refusing ones it lacks."""
    names = (spelling.name,) if isinstance(spelling.name, str) else spelling.name
    name = reader.take_first(names, spelling.default)
    if name not in ACTIVATIONS:
        raise reader.refuse(names[0], name, f"jaxmap implements {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def decoder_config(
    reader: ConfigReader,
    *,
    hidden: int,
    heads: int,
    layers: int,
    max_positions: int | ConfigField,
    norm: Literal["rms", "layer"],
    norm_eps: float | ConfigField,
    activation: str | ConfigField,
    gated_mlp: bool,
    position: Literal["rope", "learned", "alibi"],
    tie_embeddings: bool | ConfigField,
    head_dim: int | None = None,
    num_kv_heads: int | ConfigField | None = None,
    intermediate_size: int | ConfigField = ConfigField("intermediate_size"),
    rope_table: RopeTable | None = None,
    **settings: Any,
) -> DecoderConfig:
    """The decoder config of one architecture, from the sizes its adapter has read (``hidden``,
    ``heads``, ``layers``) and, for the other fields every architecture has, a value or the
    :class:`ConfigField` that the architecture's config spells it with.

    The config's ``vocab_size`` and the ConfigFields are taken in :class:`DecoderConfig`'s field
    order, after what the adapter read itself; an ``activation`` field's value is mapped onto
    the decoder's activations (unknown ones refused by name). ``head_dim`` defaults to
    ``hidden // heads``, ``num_kv_heads`` to ``heads`` and ``attn_scale`` to
    ``head_dim ** -0.5``; ``rope_table`` is one table for every layer. ``settings`` are the
    other :class:`DecoderConfig` fields.
    """
    head_dim = hidden // heads if head_dim is None else head_dim
    if rope_table is not None:
        settings.update(rope_tables=(rope_table,), layer_rope=(0,) * layers)
    settings.setdefault("attn_scale", head_dim**-0.5)
    return DecoderConfig(
        vocab_size=reader.take("vocab_size"),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads if num_kv_heads is None else _value(reader, num_kv_heads),
        head_dim=head_dim,
        intermediate_size=_value(reader, intermediate_size),
        max_positions=_value(reader, max_positions),
        norm=norm,
        norm_eps=_value(reader, norm_eps),
        activation=(
            _activation(reader, activation) if isinstance(activation, ConfigField) else activation
        ),
        gated_mlp=gated_mlp,
        position=position,
        tie_embeddings=_value(reader, tie_embeddings),
        **settings,
    )
