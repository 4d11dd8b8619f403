"""Every supported architecture as a Flax NNX module: the params as ``nnx.Param`` state around
the one decoder (:mod:`jaxmap.models.decoder`).

:class:`DecoderLM` holds a model's params, its :class:`DecoderConfig`, its HF config and its
tokenizer. It has no maths of its own: each method takes the params out as a plain pytree and
runs the decoder's functions and the engine's jitted scorer on it, so a module and
``jaxmap score`` compute with the same code. ``nnx.Optimizer`` and ``nnx.grad`` fine-tune it
(:mod:`jaxmap.training`); :func:`load` builds one from any model reference.

Importing this module imports flax; ``import jaxmap`` and scoring do not (``jaxmap.load_module``
imports it on first use).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .engine import LoadedModel, ModelScores, load_model, score_tokens, token_log_likelihoods
from .models.decoder import DecoderConfig, Params, hidden_states, unembedding
from .sharding import make_mesh, place_params
from .texts import as_text_set
from .tokenization import tokenize


def _is_variable(node: Any) -> bool:
    return isinstance(node, nnx.Variable)


class DecoderLM(nnx.Module):
    """A causal LM: the decoder's params as ``nnx.Param`` leaves, in the layout
    :mod:`jaxmap.models.layout` tabulates.

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
        return token_log_likelihoods(self.params_tree(), tokens, self.config)

    def mean_nll(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        """Mean next-token cross-entropy (nats) over the positions where ``mask`` [B, T-1] is
        true: the training loss, differentiable through the fused kernel."""
        logprobs = self.token_logprobs(tokens)
        weights = mask.astype(jnp.float32)
        return -jnp.sum(logprobs * weights) / jnp.maximum(jnp.sum(weights), 1.0)

    def loaded_model(self, mesh=None) -> LoadedModel:
        """This module as the engine's :class:`~jaxmap.engine.LoadedModel` (params copied to the
        host and placed on ``mesh`` as ``jaxmap score`` places them). It has no checkpoint: the
        module lives in memory."""
        mesh = make_mesh(mesh)
        host = jax.tree.map(lambda leaf: np.array(leaf), self.params_tree())
        placed = jax.block_until_ready(place_params(host, self.config, mesh))
        return LoadedModel(
            self.reference or "<module>", None, self.architecture, self.config, placed,
            self.tokenizer, 0.0, mesh,
        )

    def score(
        self, texts, bos_policy: str = "full", batch_tokens: int | None = None, progress: bool = False
    ) -> ModelScores:
        """Per-text log-likelihoods on a text set (a :class:`~jaxmap.texts.TextSet`, a JSONL path
        or a list of strings), exactly as ``jaxmap score`` computes them: the same tokenization,
        batch plan and compiled scorer. Returns :class:`~jaxmap.engine.ModelScores`."""
        if self.tokenizer is None:
            raise ValueError("this module has no tokenizer; score token ids with token_logprobs()")
        tokens = tokenize(as_text_set(texts), self.tokenizer, bos_policy)
        return score_tokens(self.loaded_model(), tokens, batch_tokens=batch_tokens, progress=progress)


def load(reference: str, dtype: str = "float32", cache_dir=None, mesh=None) -> DecoderLM:
    """Load any model reference ``jaxmap score`` accepts (HF directory, hub id, ``.gguf``,
    packaged name, orbax checkpoint) as a :class:`DecoderLM`, params in ``dtype``."""
    model = load_model(reference, dtype=dtype, cache_dir=cache_dir, mesh=mesh)
    return DecoderLM(
        model.config, model.params, architecture=model.architecture,
        hf_config=model.checkpoint.config(), tokenizer=model.tokenizer, reference=model.reference,
    )


# The name ``jaxmap.load_module`` exports.
load_module = load

__all__ = ["DecoderLM", "load", "load_module"]
