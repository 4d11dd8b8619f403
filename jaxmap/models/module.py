"""Every supported architecture as a Flax NNX module: the params as ``nnx.Param`` state around
the one decoder (:mod:`.decoder`).

:class:`DecoderLM` holds a model's params, its :class:`DecoderConfig`, its HF config and its
tokenizer. It has no maths of its own: each method takes the params out as a plain pytree and
runs the decoder's functions and the engine's jitted scorer on it, so a module and
``jaxmap score`` compute with the same code. ``nnx.Optimizer`` and ``nnx.grad`` fine-tune it
(:mod:`jaxmap.training`); :func:`load` builds one from any model reference.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .decoder import DecoderConfig, Params, hidden_states, unembedding


def _is_variable(node: Any) -> bool:
    return isinstance(node, nnx.Variable)


class DecoderLM(nnx.Module):
    """A causal LM: the decoder's params as ``nnx.Param`` leaves, in the layout
    :mod:`jaxmap.models.decoder` documents.

    ``architecture`` is the HF class (``LlamaForCausalLM`` ...) and ``hf_config`` the
    config.json it translates from; both travel with checkpoints so that each is
    self-describing. ``tokenizer`` is an HF fast tokenizer (or None).
    """

    def __init__(
        self,
        config: DecoderConfig,
        params: Params,
        *,
        architecture: str,
        hf_config: dict,
        tokenizer: Any = None,
        reference: str = "",
    ) -> None:
        self.config = config
        self.architecture = architecture
        # Kept as text: a static attribute of the module's graph must be hashable.
        self.hf_config_json = json.dumps(hf_config, sort_keys=True)
        self.tokenizer = tokenizer
        self.reference = reference
        self.params = nnx.data(jax.tree.map(lambda leaf: nnx.Param(jnp.asarray(leaf)), params))

    @property
    def hf_config(self) -> dict:
        """The HF config.json this module's :attr:`config` translates from."""
        return json.loads(self.hf_config_json)

    def params_tree(self) -> Params:
        """The params as a plain pytree of arrays (what the engine's functions take)."""
        return jax.tree.map(lambda variable: variable[...], self.params, is_leaf=_is_variable)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Next-token logits [B, T, V] (float32) for tokens [B, T]. This builds the full
        logits: for small inputs; :meth:`token_logprobs` scores without them."""
        params = self.params_tree()
        hidden, _ = hidden_states(params, tokens, self.config)
        weights = unembedding(params, self.config)[: self.config.vocab_size]
        logits = jnp.einsum(
            "btd,vd->btv", hidden.astype(weights.dtype), weights,
            preferred_element_type=jnp.float32,
        )
        if "unembed_bias" in params:
            logits = logits + params["unembed_bias"][: self.config.vocab_size]
        if self.config.final_logit_softcap:
            cap = self.config.final_logit_softcap
            logits = cap * jnp.tanh(logits / cap)
        return logits

    def token_logprobs(self, tokens: jax.Array) -> jax.Array:
        """log p(tokens[:, t+1] | tokens[:, :t+1]): [B, T-1] float32, through the engine's jitted
        scorer and fused vocab-tiled kernel (the params are its arguments)."""
        from ..engine import token_log_likelihoods

        return token_log_likelihoods(self.params_tree(), tokens, self.config)

    def mean_nll(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        """Mean next-token cross-entropy (nats) over the positions where ``mask`` [B, T-1] is
        true: the training loss, differentiable through the fused kernel."""
        logprobs = self.token_logprobs(tokens)
        weights = mask.astype(jnp.float32)
        return -jnp.sum(logprobs * weights) / jnp.maximum(jnp.sum(weights), 1.0)

    def loaded_model(self, mesh=None):
        """This module as the engine's :class:`~jaxmap.engine.LoadedModel` (params copied to the
        host and placed on ``mesh`` as ``jaxmap score`` places them)."""
        from ..checkpoints import Checkpoint
        from ..engine import LoadedModel
        from ..sharding import make_mesh, place_params

        mesh = make_mesh(mesh)
        host = jax.tree.map(lambda leaf: np.array(leaf), self.params_tree())
        placed = jax.block_until_ready(place_params(host, self.config, mesh))
        checkpoint = Checkpoint(self.reference or "<module>", None, "", "module", self.reference)
        return LoadedModel(
            self.reference or "<module>", checkpoint, self.architecture, self.config, placed,
            self.tokenizer, 0.0, mesh,
        )

    def score(self, texts, bos_policy: str = "full", batch_tokens: int | None = None, progress: bool = False):
        """Per-text log-likelihoods on a text set (a :class:`~jaxmap.texts.TextSet`, a JSONL path
        or a list of strings), exactly as ``jaxmap score`` computes them: the same tokenization,
        batch plan and compiled scorer. Returns :class:`~jaxmap.engine.ModelScores`."""
        from ..engine import score_tokens
        from ..jobs import _as_text_set
        from ..tokenization import tokenize

        if self.tokenizer is None:
            raise ValueError("this module has no tokenizer; score token ids with token_logprobs()")
        tokens = tokenize(_as_text_set(texts), self.tokenizer, bos_policy)
        return score_tokens(self.loaded_model(), tokens, batch_tokens=batch_tokens, progress=progress)


def load(reference: str, dtype: str = "float32", cache_dir=None, mesh=None) -> DecoderLM:
    """Load any model reference ``jaxmap score`` accepts (HF directory, hub id, ``.gguf``,
    packaged name, orbax checkpoint) as a :class:`DecoderLM`, params in ``dtype``."""
    from ..engine import load_model

    model = load_model(reference, dtype=dtype, cache_dir=cache_dir, mesh=mesh)
    return DecoderLM(
        model.config, model.params, architecture=model.architecture,
        hf_config=model.checkpoint.config(), tokenizer=model.tokenizer, reference=model.reference,
    )


# The DecoderConfig fields :func:`init_params` builds params for; any other field must keep its
# default (a feature such as mixture-of-experts layers has params init_params does not make).
_INIT_FIELDS = {
    "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
    "intermediate_size", "max_positions", "norm", "norm_eps", "activation", "gated_mlp",
    "position", "attn_scale", "tie_embeddings", "rotary_dim", "rope_tables", "layer_rope",
    "layer_window", "parallel_residual", "qk_norm", "sandwich_norm", "embed_scale",
    "final_logit_softcap", "attn_logit_softcap",
}


def init_unsupported(config: DecoderConfig) -> list[str]:
    """The config fields that :func:`init_params` cannot build params for (empty: it can)."""
    out = [
        item.name for item in dataclasses.fields(config)
        if item.name not in _INIT_FIELDS and getattr(config, item.name) != item.default
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

    def make(kind: str, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
        if kind == "normal":
            return (generator.standard_normal(shape, np.float32) * np.float32(scale)).astype(np.float32)
        return (np.ones if kind == "ones" else np.zeros)(shape, np.float32)

    return _params_layout(config, linear_bias, make)


def param_shapes(config: DecoderConfig, linear_bias: frozenset[str] = frozenset()) -> dict:
    """The params tree :func:`init_params` builds, with each leaf's shape instead of an array."""
    return _params_layout(config, linear_bias, lambda kind, shape, scale=1.0: tuple(shape))


def _params_layout(config: DecoderConfig, linear_bias: frozenset[str], make) -> dict:
    layers, width = config.num_layers, config.hidden_size
    heads, kv_heads, head_dim = config.num_heads, config.num_kv_heads, config.head_dim

    def norm(shape: tuple[int, ...]) -> dict:
        out = {"scale": make("ones", shape)}
        if config.norm == "layer":
            out["bias"] = make("zeros", shape)
        return out

    def linear(name: str, fan_in: int, fan_out: int) -> dict:
        out = {"kernel": make("normal", (layers, fan_in, fan_out), fan_in**-0.5)}
        if name in linear_bias:
            out["bias"] = make("zeros", (layers, fan_out))
        return out

    layer = {
        "attn_norm": norm((layers, width)),
        "mlp_norm": norm((layers, width)),
        "q": linear("q", width, heads * head_dim),
        "k": linear("k", width, kv_heads * head_dim),
        "v": linear("v", width, kv_heads * head_dim),
        "o": linear("o", heads * head_dim, width),
        "up": linear("up", width, config.intermediate_size),
        "down": linear("down", config.intermediate_size, width),
    }
    if config.gated_mlp:
        layer["gate"] = linear("gate", width, config.intermediate_size)
    if config.sandwich_norm:
        layer["attn_post_norm"] = norm((layers, width))
        layer["mlp_post_norm"] = norm((layers, width))
    if config.qk_norm:
        layer["q_norm"] = norm((layers, head_dim))
        layer["k_norm"] = norm((layers, head_dim))
    params = {
        "embed": make("normal", (config.vocab_size, width), 0.02),
        "final_norm": norm((width,)),
        "layers": layer,
    }
    if config.position == "learned":
        params["positions"] = make("normal", (config.max_positions, width), 0.02)
    if not config.tie_embeddings:
        params["unembed"] = make("normal", (config.vocab_size, width), width**-0.5)
    return params


# The name ``jaxmap.load_module`` exports.
load_module = load

__all__ = ["DecoderLM", "init_params", "init_unsupported", "load", "load_module", "param_shapes"]
