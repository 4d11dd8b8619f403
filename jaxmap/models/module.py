"""Deprecated: this module's names moved. :class:`DecoderLM`, :func:`load` and
:func:`load_module` are in :mod:`jaxmap.module` (the Flax NNX module builds on the engine, which
builds on the model ports), and :func:`init_params`, :func:`param_shapes` and
:func:`init_unsupported` in :mod:`jaxmap.models.layout`. The old names still work, with a
DeprecationWarning."""

from __future__ import annotations

from .._moved import old_home

__getattr__ = old_home(__name__, {
    **dict.fromkeys(("DecoderLM", "load", "load_module"), "jaxmap.module"),
    **dict.fromkeys(("init_params", "init_unsupported", "param_shapes"), "jaxmap.models.layout"),
})
