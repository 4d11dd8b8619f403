"""The decoder's params layout, as one table (:data:`LAYOUT`): every parameter's path in the
params pytree, the logical axis of each of its dimensions (which gives its shape for a
:class:`DecoderConfig`), when a config has it, its dtype and how a new model initialises it.

Everything that needs the layout reads this table: :mod:`.decoder` computes with it, the
adapters build it from checkpoints, :func:`param_shapes` lets an orbax checkpoint be checked
against it (:mod:`jaxmap.checkpoints.orbax`), :func:`init_params` builds a new model
(:mod:`jaxmap.training`), and :mod:`jaxmap.sharding` splits the params over a mesh by their
logical axes.

Linear weights are ``[in, out]`` so the hot loop multiplies without transposes. Layer params are
stacked over a leading ``layers`` axis (one ``lax.scan`` over the layers). The logical axes:

==========  ==============================================================================
layers      L = ``num_layers`` less ``dense_layers`` (the params["layers"] stack)
dense_layers  ``dense_layers``: the leading layers with a dense MLP in a mixture-of-experts
            model (DeepSeek), stacked apart under ``dense_layers.*`` with the same params as
            ``layers.*`` but the experts'; their MLP is ``dense_mlp`` wide
vocab       V = ``vocab_size``; on a mesh the rows are padded to V' ≥ V, a multiple of the
            model axis (:mod:`jaxmap.sharding`). Padding rows are never looked up, and the
            log-prob kernel leaves them out of the normaliser.
embed       D = ``hidden_size``, the residual stream
positions   P = ``max_positions`` (learned positions)
heads       H·hd, the attention heads' columns (``num_heads * head_dim``)
kv_heads    Hkv·hd, the key/value heads' columns (``num_kv_heads * head_dim``)
head_dim    hd = ``head_dim``
v_heads     H·``value_head_dim``, the attention context's columns (H·hd but with latent
            attention)
q_lora, kv_lora   latent attention's query and key/value latents (``q_lora_rank``,
            ``kv_lora_rank``); kv_latent: ``kv_lora_rank`` + ``rotary_dim`` (kv_a's output,
            the latent then the shared rope key); kv_expanded: H·(hd - ``rotary_dim`` +
            ``value_head_dim``), kv_b's output (each head's rope-free key, then its value)
head_count  H = ``num_heads`` (kv_head_count: Hkv = ``num_kv_heads``), for norms kept per head
q_norm      what a q norm spans: hd per head (``qk_norm_scope == "head"``), else H·hd
k_norm      what a k norm spans: hd per head, else Hkv·hd
mlp         I = ``intermediate_size`` (with experts: the shared expert's)
experts     E = ``num_experts``
dense_mlp   ``dense_intermediate_size``
expert_mlp  each expert's columns, ``expert_intermediate_size``
one         1 (the shared expert's gate has one output)
==========  ==============================================================================

A norm is ``{scale[, bias]}`` (a LayerNorm's bias is there where the checkpoint has one: MPT's,
OLMo's and a no-affine OPT's have none); a linear ``{kernel[, bias]}``, whose bias is there when
the architecture's checkpoints carry one. Norm scales, biases and the router stay float32 whatever
the weights' dtype (so does the residual stream); matmuls take weights in the params' dtype and
accumulate in float32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .decoder import DecoderConfig, Params

Condition = Callable[[DecoderConfig], bool]


def _always(config: DecoderConfig) -> bool:
    return True


@dataclass(frozen=True)
class Param:
    """One parameter of the layout.

    ``axes`` names the logical axis of each dimension (``or_axes``: another form that some
    architectures' checkpoints hold, which the decoder broadcasts alike); ``when`` says whether
    a config has the parameter; ``bias_of`` marks the optional bias of the linear it names (there when the
    architecture's checkpoints carry it). ``weight``: held in the weights' dtype (else float32).
    ``init`` is how :func:`init_params` fills it: ``"normal"`` with standard deviation ``std``,
    a number or the logical axis whose size to the power -1/2 it is (the fan-in), else
    ``"ones"`` or ``"zeros"``.
    """

    path: str
    axes: tuple[str, ...]
    when: Condition = _always
    bias_of: str | None = None
    weight: bool = False
    init: str = "zeros"
    std: float | str = 1.0
    or_axes: tuple[str, ...] = ()

    def shape(self, config: DecoderConfig) -> tuple[int, ...]:
        """The parameter's shape for ``config`` (unpadded vocabulary)."""
        sizes = axis_sizes(config)
        return tuple(sizes[axis] for axis in self.axes)

    def shapes(self, config: DecoderConfig) -> list[tuple[int, ...]]:
        """Every shape the parameter may have for ``config``: :meth:`shape`, and that of
        ``or_axes`` if given."""
        sizes = axis_sizes(config)
        return [tuple(sizes[axis] for axis in axes) for axes in (self.axes, self.or_axes) if axes]

    def present(self, config: DecoderConfig, linear_bias: frozenset[str] = frozenset()) -> bool:
        """Whether a model of ``config`` has this parameter, its linears carrying a bias where
        ``linear_bias`` names them (``q k v o gate up down unembed``)."""
        return self.when(config) and (self.bias_of is None or self.bias_of in linear_bias)


def axis_sizes(config: DecoderConfig) -> dict[str, int]:
    """The size of every logical axis for ``config`` (see the module docstring)."""
    heads = config.num_heads * config.head_dim
    kv_heads = config.num_kv_heads * config.head_dim
    per_head = config.qk_norm_scope == "head"
    return {
        "layers": config.num_layers - config.dense_layers,
        "dense_layers": config.dense_layers,
        "dense_mlp": config.dense_intermediate_size,
        "v_heads": config.num_heads * config.value_head_dim,
        "q_lora": config.q_lora_rank,
        "kv_lora": config.kv_lora_rank,
        "kv_latent": config.kv_lora_rank + config.rotary_dim,
        "kv_expanded": config.num_heads * (config.head_dim - config.rotary_dim + config.value_head_dim),
        "vocab": config.vocab_size,
        "embed": config.hidden_size,
        "positions": config.max_positions,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": config.head_dim,
        "head_count": config.num_heads,
        "kv_head_count": config.num_kv_heads,
        "q_norm": config.head_dim if per_head else heads,
        "k_norm": config.head_dim if per_head else kv_heads,
        "mlp": config.intermediate_size,
        "experts": config.num_experts,
        "expert_mlp": config.expert_intermediate_size,
        "one": 1,
    }


def _norm(
    path: str, axes: tuple[str, ...], when: Condition = _always, or_axes: tuple[str, ...] = ()
) -> tuple[Param, ...]:
    return (
        Param(f"{path}.scale", axes, when, init="ones", or_axes=or_axes),
        Param(f"{path}.bias", axes, lambda config: when(config) and config.norm == "layer", or_axes=or_axes),
    )


def _linear(name: str, fan_in: str, fan_out: str, when: Condition = _always) -> tuple[Param, ...]:
    return (
        Param(f"layers.{name}.kernel", ("layers", fan_in, fan_out), when, weight=True, init="normal", std=fan_in),
        Param(f"layers.{name}.bias", ("layers", fan_out), when, bias_of=name),
    )


def _layer_norms(config: DecoderConfig) -> bool:
    # Blocks without pre-norms (OLMo2) norm only their sublayers' outputs (sandwich norms).
    return config.pre_norm or config.post_norm


def _dense_mlp(config: DecoderConfig) -> bool:
    return not config.num_experts or config.shared_expert


def _experts(config: DecoderConfig) -> bool:
    return config.num_experts > 0


def _latent(config: DecoderConfig) -> bool:
    return config.kv_lora_rank > 0


def _plain_attention(config: DecoderConfig) -> bool:
    return not config.kv_lora_rank


# The layout. Its order is the order in which init_params draws random values (layers first).
PARAMS: tuple[Param, ...] = (
    *_norm("layers.attn_norm", ("layers", "embed"), _layer_norms),
    *_norm("layers.mlp_norm", ("layers", "embed"), _layer_norms),
    *_linear("q", "embed", "heads", lambda config: not (config.kv_lora_rank and config.q_lora_rank)),
    *_linear("k", "embed", "kv_heads", _plain_attention),
    *_linear("v", "embed", "kv_heads", _plain_attention),
    *_linear("o", "v_heads", "embed"),
    # Multi-head latent attention (DeepSeek): see DecoderConfig.kv_lora_rank.
    *_linear("q_a", "embed", "q_lora", lambda config: _latent(config) and config.q_lora_rank > 0),
    *_norm("layers.q_a_norm", ("layers", "q_lora"), lambda config: _latent(config) and config.q_lora_rank > 0),
    *_linear("q_b", "q_lora", "heads", lambda config: _latent(config) and config.q_lora_rank > 0),
    *_linear("kv_a", "embed", "kv_latent", _latent),
    *_norm("layers.kv_a_norm", ("layers", "kv_lora"), _latent),
    *_linear("kv_b", "kv_lora", "kv_expanded", _latent),
    *_linear("up", "embed", "mlp", _dense_mlp),
    *_linear("down", "mlp", "embed", _dense_mlp),
    *_linear("gate", "embed", "mlp", lambda config: config.gated_mlp and _dense_mlp(config)),
    *_norm("layers.attn_post_norm", ("layers", "embed"), lambda config: config.sandwich_norm),
    *_norm("layers.mlp_post_norm", ("layers", "embed"), lambda config: config.sandwich_norm),
    # StableLM keeps a q/k norm for each head: [L, H, hd] and [L, Hkv, hd].
    *_norm("layers.q_norm", ("layers", "q_norm"), lambda config: config.qk_norm, ("layers", "head_count", "head_dim")),
    *_norm("layers.k_norm", ("layers", "k_norm"), lambda config: config.qk_norm, ("layers", "kv_head_count", "head_dim")),
    # Mixture of experts: the router (float32: see decoder.expert_weights), every expert's gated
    # MLP stacked over the experts, and the shared expert's sigmoid gate (Qwen2-MoE).
    Param("layers.router.kernel", ("layers", "embed", "experts"), _experts, init="normal", std="embed"),
    Param("layers.router.choice_bias", ("layers", "experts"), lambda config: config.router_choice_bias),
    Param("layers.experts.gate", ("layers", "experts", "embed", "expert_mlp"), _experts, weight=True, init="normal", std="embed"),
    Param("layers.experts.up", ("layers", "experts", "embed", "expert_mlp"), _experts, weight=True, init="normal", std="embed"),
    Param("layers.experts.down", ("layers", "experts", "expert_mlp", "embed"), _experts, weight=True, init="normal", std="expert_mlp"),
    *_linear("shared_gate", "embed", "one", lambda config: config.shared_expert and config.shared_expert_gated),
    Param("embed", ("vocab", "embed"), weight=True, init="normal", std=0.02),
    *_norm("embed_norm", ("embed",), lambda config: config.embed_norm),
    *_norm("final_norm", ("embed",), lambda config: config.has_final_norm),
    Param("positions", ("positions", "embed"), lambda config: config.position == "learned", weight=True, init="normal", std=0.02),
    Param("unembed", ("vocab", "embed"), lambda config: not config.tie_embeddings, weight=True, init="normal", std="embed"),
    # Whether tied or not (GPT-J, CodeGen, Phi).
    Param("unembed_bias", ("vocab",), bias_of="unembed"),
)

_EXPERT_ONLY = ("router", "experts", "shared_gate")
_MLP = ("gate", "up", "down")


def _dense_stack_param(param: Param) -> Param:
    """``param`` of the ``layers`` stack as the ``dense_layers`` stack holds it."""
    name = param.path.split(".")[1]
    axes = tuple({"layers": "dense_layers", "mlp": "dense_mlp"}.get(axis, axis) for axis in param.axes)
    when = param.when

    def present(config: DecoderConfig) -> bool:
        # A dense layer's MLP is there whatever the expert layers' shared expert.
        return config.dense_layers > 0 and (name in _MLP or when(config))

    return dataclasses.replace(
        param, path="dense_" + param.path, axes=axes, when=present,
        std={"mlp": "dense_mlp"}.get(param.std, param.std),
    )


PARAMS = PARAMS + tuple(
    _dense_stack_param(param) for param in PARAMS
    if param.path.startswith("layers.") and param.path.split(".")[1] not in _EXPERT_ONLY
)

LAYOUT: dict[str, Param] = {param.path: param for param in PARAMS}


def _tree(config: DecoderConfig, linear_bias: frozenset[str], leaf: Callable[[Param], object]) -> dict:
    """The params tree of ``config``, with ``leaf(param)`` at each parameter's path."""
    tree: dict = {}
    for param in PARAMS:
        if not param.present(config, linear_bias):
            continue
        *parents, name = param.path.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = leaf(param)
    return tree


def param_shapes(config: DecoderConfig, linear_bias: frozenset[str] = frozenset()) -> dict:
    """The params tree of ``config``, with each leaf's shape instead of an array; the linears
    that ``linear_bias`` names carry a bias."""
    return _tree(config, linear_bias, lambda param: param.shape(config))


# The DecoderConfig fields :func:`init_params` builds params for; any other field must keep its
# default (a feature such as mixture-of-experts layers has params that no initialisation here
# has been checked for).
INIT_FIELDS = frozenset({
    "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
    "intermediate_size", "max_positions", "norm", "norm_eps", "activation", "gated_mlp",
    "position", "attn_scale", "tie_embeddings", "rotary_dim", "rope_tables", "layer_rope",
    "layer_window", "parallel_residual", "qk_norm", "sandwich_norm", "embed_scale",
    "final_logit_softcap", "attn_logit_softcap",
})


def init_unsupported(config: DecoderConfig) -> list[str]:
    """The config fields that :func:`init_params` cannot build params for (empty: it can)."""
    out = [
        item.name for item in dataclasses.fields(config)
        if item.name not in INIT_FIELDS and getattr(config, item.name) != item.default
    ]
    if config.position not in ("rope", "learned"):
        out.append(f"position={config.position}")
    return out


def init_params(config: DecoderConfig, seed: int, linear_bias: frozenset[str] = frozenset()) -> Params:
    """Random params (float32, host arrays) for training ``config`` from scratch.

    Linear kernels are normal with standard deviation 1/sqrt(fan-in), embeddings 0.02 (as
    GPT-2 and Llama initialise them), norms scale 1 (bias 0 for LayerNorm). ``linear_bias``
    names the projections (``q k v o gate up down``) that carry a zero-initialised bias, as the
    architecture's checkpoints do.
    """
    # numpy's generator on the host: no device work (nor a compilation per shape) to initialise.
    generator = np.random.default_rng(seed)
    sizes = axis_sizes(config)

    def make(param: Param) -> np.ndarray:
        shape = param.shape(config)
        if param.init == "normal":
            scale = sizes[param.std] ** -0.5 if isinstance(param.std, str) else param.std
            return (generator.standard_normal(shape, np.float32) * np.float32(scale)).astype(np.float32)
        return (np.ones if param.init == "ones" else np.zeros)(shape, np.float32)

    return _tree(config, linear_bias, make)


__all__ = [
    "INIT_FIELDS",
    "LAYOUT",
    "PARAMS",
    "Param",
    "axis_sizes",
    "init_params",
    "init_unsupported",
    "param_shapes",
]
