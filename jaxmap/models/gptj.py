"""GPTJForCausalLM and CodeGenForCausalLM: one weight map, two q/k/v layouts.

Both run attention and MLP in parallel off one LayerNorm (``ln_1``), rotate the first
``rotary_dim`` features of each head GPT-J style (pairs ``(2i, 2i+1)``, "rotate every two") and
have an output-projection bias. CodeGen differs only in its fused ``qkv_proj``.

Both quirks become host-side weight transformations, not decoder features:

* the MLP's norm is a copy of ``ln_1`` (the decoder's parallel residual reads a second norm);
* the q and k output columns of each head are permuted so that pair ``(2i, 2i+1)`` lands on
  ``(i, i + rotary_dim/2)``, where the decoder's rotate-half rotary turns it by the same angle.
  Attention only sees ``q·k``, which is unchanged when q and k are permuted alike.
"""

from __future__ import annotations

import numpy as np

from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .rope import rope_table
from .weights import WeightSource, assemble_params, norm_params, torch_linear, torch_linears

# CodeGen's fused projection is interleaved over the 4 model-parallel shards it was trained on.
_CODEGEN_SHARDS = 4


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for GPT-J and CodeGen."""
    hidden = reader.take_first(("n_embd", "hidden_size"))
    heads = reader.take_first(("n_head", "num_attention_heads"))
    layers = reader.take_first(("n_layer", "num_hidden_layers"))
    if reader.architecture == "CodeGenForCausalLM":
        if hidden % _CODEGEN_SHARDS:
            raise reader.refuse("n_embd", hidden, "CodeGen's fused qkv_proj needs a multiple of 4")
        # Stored by CodeGen configs, read by nothing in the model.
        reader.take("n_ctx", None)
    head_dim = hidden // heads
    if head_dim * heads != hidden:
        raise reader.refuse("n_head", heads, f"must divide n_embd = {hidden}")
    # Released configs carry these; transformers reads none of them (GPT-J and CodeGen always
    # apply rotary and scale attention by head_dim ** -0.5).
    reader.expect("rotary", [True], True)
    reader.take("scale_attn_weights", True)
    reader.take("gradient_checkpointing", False)
    # Without rotary_dim transformers builds frequencies for the whole hidden size, which only
    # fit a single head; real checkpoints always set it.
    rotary_dim = reader.take("rotary_dim")
    if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
        raise reader.refuse("rotary_dim", rotary_dim, f"must be even and within head_dim {head_dim}")
    max_positions = reader.take_first(("n_positions", "max_position_embeddings"))
    # Fixed base 10000, no scaling: the config has no rope fields.
    table, max_positions = rope_table(
        {"rope_theta": 10000.0}, rotary_dim, max_positions, reader.architecture
    )
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers, head_dim=head_dim,
        intermediate_size=ConfigField("n_inner", 4 * hidden), max_positions=max_positions,
        norm="layer", norm_eps=ConfigField("layer_norm_epsilon", 1e-5),
        activation=ConfigField("activation_function"), gated_mlp=False,
        position="rope", rotary_dim=rotary_dim, rope_table=table,
        tie_embeddings=ConfigField("tie_word_embeddings", False),
        parallel_residual=True,
    )


def interleaved_to_half_rotary(rotary_dim: int, head_dim: int) -> np.ndarray:
    """Per-head feature order that turns GPT-J's pairs ``(2i, 2i+1)`` into rotate-half's
    ``(i, i + rotary_dim/2)``; features past ``rotary_dim`` keep their place."""
    return np.concatenate(
        [np.arange(0, rotary_dim, 2), np.arange(1, rotary_dim, 2), np.arange(rotary_dim, head_dim)]
    )


def _permute_heads(kernel: np.ndarray, order: np.ndarray, heads: int) -> np.ndarray:
    width = kernel.shape[0]
    return kernel.reshape(width, heads, -1)[:, :, order].reshape(width, -1)


def _codegen_qkv(weights: WeightSource, name: str, config: DecoderConfig, dtype) -> dict:
    # Output rows: 4 shards, each [q | v | k] of hidden/4 rows (note v before k); the shards'
    # q parts concatenated are the full q.
    width = config.hidden_size
    kernel = torch_linear(weights, name, dtype, bias=False)["kernel"]
    kernel = kernel.reshape(width, _CODEGEN_SHARDS, 3, width // _CODEGEN_SHARDS)
    return {
        part: kernel[:, :, index, :].reshape(width, width)
        for index, part in enumerate(("q", "v", "k"))
    }


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``transformer.h.{i}.attn.q_proj`` (GPT-J) or ``.attn.qkv_proj`` (CodeGen) etc. onto
    the decoder's params."""
    order = interleaved_to_half_rotary(config.rotary_dim, config.head_dim)
    fused = "transformer.h.0.attn.qkv_proj.weight" in weights

    def layer(i: int) -> dict:
        prefix = f"transformer.h.{i}"
        if fused:
            kernels = _codegen_qkv(weights, f"{prefix}.attn.qkv_proj", config, dtype)
        else:
            kernels = {
                part: torch_linear(weights, f"{prefix}.attn.{part}_proj", dtype, bias=False)["kernel"]
                for part in "qkv"
            }
        norm = norm_params(weights, f"{prefix}.ln_1", True)
        return {
            "attn_norm": norm,
            # Parallel attention and MLP read the same ln_1.
            "mlp_norm": norm,
            "q": {"kernel": _permute_heads(kernels["q"], order, config.num_heads)},
            "k": {"kernel": _permute_heads(kernels["k"], order, config.num_heads)},
            "v": {"kernel": kernels["v"]},
            "o": torch_linear(weights, f"{prefix}.attn.out_proj", dtype, bias=False),
            **torch_linears(weights, dtype, up=f"{prefix}.mlp.fc_in", down=f"{prefix}.mlp.fc_out"),
        }

    return assemble_params(
        weights, config, dtype, layer,
        embed="transformer.wte.weight",
        final_norm=norm_params(weights, "transformer.ln_f", True),
        # Old checkpoints carry the causal-mask buffers as tensors.
        ignorable=(r"transformer\.h\.\d+\.attn\.(bias|masked_bias|causal_mask)",),
        extra={"unembed_bias": weights("lm_head.bias")},
    )
