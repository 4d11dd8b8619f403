"""MixtralForCausalLM, Qwen3MoeForCausalLM and Qwen2MoeForCausalLM: the Llama family's attention
with a mixture-of-experts MLP in every layer.

Attention, norms, rope and the outer weights are the Llama family's (:mod:`.llama`): Mixtral is
Mistral's layout, Qwen3-MoE has Qwen3's per-head q/k norms, Qwen2-MoE Qwen2's q/k/v biases. The
MLP is the decoder's mixture of experts (:func:`jaxmap.models.decoder.expert_weights`): softmax
router, top-k; Mixtral always renormalises the top-k weights, the Qwen models when
``norm_topk_prob``. Qwen2-MoE adds a shared expert scaled by a sigmoid gate.

Experts are read one by one as the hub releases and ``save_pretrained`` store them
(``block_sparse_moe.experts.{j}.w1/w3/w2`` for Mixtral, ``mlp.experts.{j}.gate_proj/up_proj/
down_proj`` for Qwen), or stacked as transformers 5 holds them in memory
(``mlp.experts.gate_up_proj`` [E, 2I, D] and ``mlp.experts.down_proj`` [E, D, I]).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import UnsupportedModelError
from . import llama
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .weights import WeightSource, torch_linear

_MIXTRAL = "MixtralForCausalLM"
_QWEN2_MOE = "Qwen2MoeForCausalLM"
_QWEN3_MOE = "Qwen3MoeForCausalLM"

# Accepted as neutral for these architectures only: the router's auxiliary load-balancing loss
# and returned router logits change a training step's loss and outputs, never the logits, and
# router jitter noise scales the MLP's inputs only in training mode.
_TRAINING_ONLY = ("output_router_logits", "router_aux_loss_coef", "router_jitter_noise")

# Per-expert tensor names (gate, up, down) in the hub layout: Mixtral's under block_sparse_moe,
# Qwen's under mlp.
_EXPERT_NAMES = {"block_sparse_moe": ("w1", "w3", "w2"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def _refuse_dense_layers(reader: ConfigReader) -> None:
    """Qwen's MoE configs can make some layers dense MLPs; refused, because the decoder scans
    over layers of one shape (mixing would need two scans or padded experts)."""
    step = reader.take("decoder_sparse_step", 1)
    if step != 1:
        raise reader.refuse(
            "decoder_sparse_step", step, "only every layer sparse (1) is implemented"
        )
    dense = reader.take("mlp_only_layers", [])
    if dense:
        raise reader.refuse("mlp_only_layers", dense, "dense layers among sparse ones")


def _qwen_windows(reader: ConfigReader, layers: int) -> tuple[int, ...]:
    use_sliding = reader.take("use_sliding_window", False)
    window = reader.take("sliding_window", 0) or 0
    if reader.architecture == _QWEN3_MOE:
        # Qwen3-MoE slides on every layer when use_sliding_window; it never reads
        # max_window_layers, which its released configs still carry.
        reader.take("max_window_layers", None)
        return (int(window) if use_sliding else 0,) * layers
    # Qwen2-MoE's sliding layers follow a pattern of its own; no released model enables them.
    reader.take("max_window_layers", None)
    if use_sliding:
        raise reader.refuse("use_sliding_window", use_sliding, "not implemented for Qwen2-MoE")
    layer_types = reader.take("layer_types", ["full_attention"] * layers)
    if list(layer_types) != ["full_attention"] * layers:
        raise reader.refuse("layer_types", layer_types, "only full attention is implemented")
    return (0,) * layers


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for Mixtral, Qwen3-MoE and Qwen2-MoE."""
    for name in _TRAINING_ONLY:
        reader.take(name, None)
    # transformers maps num_experts onto num_local_experts for Mixtral and Qwen3-MoE and saves
    # whichever name its config class uses; hub configs carry either.
    experts = reader.take_first(("num_local_experts", "num_experts"))
    per_token = reader.take("num_experts_per_tok")
    if per_token > experts:
        raise reader.refuse("num_experts_per_tok", per_token, f"more than the {experts} experts")
    layers = reader.take("num_hidden_layers")
    if reader.architecture == _MIXTRAL:
        expert_width = reader.take("intermediate_size")
        # Mixtral's router always renormalises its top-k weights.
        config = llama.translate(reader)
        return dataclasses.replace(
            config, num_experts=experts, experts_per_token=per_token,
            expert_intermediate_size=expert_width, normalize_expert_weights=True,
        )
    _refuse_dense_layers(reader)
    expert_width = reader.take("moe_intermediate_size")
    # The dense MLP width, used only by layers that _refuse_dense_layers rules out.
    reader.take("intermediate_size")
    shared = reader.architecture == _QWEN2_MOE
    if shared:
        # Biases are read from the checkpoint; the flag only says whether to expect them.
        reader.take("qkv_bias", True)
    config = llama.translate(reader, layer_window=_qwen_windows(reader, layers))
    return dataclasses.replace(
        config,
        intermediate_size=reader.take("shared_expert_intermediate_size") if shared else expert_width,
        num_experts=experts,
        experts_per_token=per_token,
        expert_intermediate_size=expert_width,
        normalize_expert_weights=bool(reader.take("norm_topk_prob", False)),
        shared_expert=shared,
    )


def stacked_experts(weights: WeightSource, prefix: str, config: DecoderConfig, dtype) -> dict:
    """The experts' gate/up [E, D, I] and down [E, I, D] kernels from ``{prefix}.experts``."""
    fused = f"{prefix}.experts.gate_up_proj"
    if fused in weights:
        gate_up = weights(fused, dtype)  # [E, 2I, D], gate rows first
        width = config.expert_intermediate_size
        return {
            "gate": np.swapaxes(gate_up[:, :width], 1, 2),
            "up": np.swapaxes(gate_up[:, width:], 1, 2),
            "down": np.swapaxes(weights(f"{prefix}.experts.down_proj", dtype), 1, 2),
        }
    names = _EXPERT_NAMES[prefix.rsplit(".", 1)[1]]
    return {
        part: np.stack(
            [
                weights(f"{prefix}.experts.{j}.{name}.weight", dtype).T
                for j in range(config.num_experts)
            ]
        )
        for part, name in zip(("gate", "up", "down"), names)
    }


def router_kernel(weights: WeightSource, name: str, config: DecoderConfig) -> np.ndarray:
    """The router's [D, E] kernel, float32 whatever ``dtype`` (see decoder.expert_weights).

    Two equal router rows (an untrained router is all zeros) tie on every token, and
    transformers' torch.topk breaks ties in an unspecified order: refused.
    """
    rows = weights(name)
    if len(np.unique(rows, axis=0)) < config.num_experts:
        raise UnsupportedModelError(
            f"{weights.model}: {name} has equal rows for some experts; their routing ties are "
            "broken in an unspecified order by transformers"
        )
    return rows.T


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map the Llama-style attention and ``{moe}.gate`` / ``{moe}.experts`` onto the decoder's
    params (``{moe}`` is ``block_sparse_moe`` in Mixtral's hub checkpoints, ``mlp`` otherwise)."""

    def layer(i: int) -> dict:
        prefix = f"model.layers.{i}"
        moe = f"{prefix}.block_sparse_moe"
        if f"{moe}.gate.weight" not in weights:
            moe = f"{prefix}.mlp"
        out = llama.attention_params(weights, prefix, config, dtype)
        out["router"] = {"kernel": router_kernel(weights, f"{moe}.gate.weight", config)}
        out["experts"] = stacked_experts(weights, moe, config, dtype)
        if config.shared_expert:
            for part in ("gate", "up", "down"):
                out[part] = torch_linear(weights, f"{moe}.shared_expert.{part}_proj", dtype)
            out["shared_gate"] = torch_linear(weights, f"{moe}.shared_expert_gate", dtype)
        return out

    return llama.assemble(weights, config, dtype, layer)


__all__ = ["translate", "convert", "router_kernel", "stacked_experts"]
