"""FalconForCausalLM: every variant transformers runs.

* new_decoder_architecture (Falcon-40B/180B): ``num_kv_heads`` groups, parallel attention and
  MLP read by two norms (``ln_attn``, ``ln_mlp``) or one (``num_ln_in_parallel_attn`` = 1);
* the original architecture (Falcon-7B, Falcon-RW): multi-query or multi-head, parallel
  attention and MLP sharing one ``input_layernorm`` (its params are duplicated into the
  decoder's MLP norm), or sequential with a ``post_attention_layernorm``;
* rotary positions, or ALiBi (``alibi``), which transformers' Falcon builds in bfloat16 and
  scales by 1/sqrt(head_dim) together with q.k.

All three fused q/k/v layouts are one: per kv group, its query heads, then its key, then its
value (multi-query is one group of every head, multi-head a group per head).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from .adapter import ConfigField, decoder_config
from .bloom import alibi_slopes
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .rope import read_rope_parameters, rope_table
from .weights import WeightSource, assemble_params, norm_params, torch_linear, torch_linears


def _round_to_bfloat16(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, np.float32).astype(ml_dtypes.bfloat16))


def _attention_layout(reader: ConfigReader, heads: int) -> tuple[int, bool]:
    """(kv heads, whether attention and MLP run in parallel) of the config's architecture.

    transformers 5 also saves the kv heads it derives as ``num_key_value_heads``: accepted where
    it says the same.
    """
    new_architecture = reader.take("new_decoder_architecture", False)
    multi_query = reader.take("multi_query", True)
    parallel = reader.take("parallel_attn", True)
    kv_heads = reader.take("num_kv_heads", heads)
    norms = reader.take("num_ln_in_parallel_attn", None)
    if new_architecture:
        # transformers builds this layer's norms for parallel attention only; it cannot run
        # a sequential one.
        if not parallel:
            raise reader.refuse(
                "parallel_attn", False, "transformers runs the new decoder architecture only in parallel"
            )
        if norms not in (None, 1, 2):
            raise reader.refuse("num_ln_in_parallel_attn", norms, "Falcon has 1 or 2 norms")
        reader.take_copy("num_key_value_heads", "num_kv_heads", kv_heads)
        return kv_heads, True
    if not multi_query and kv_heads != heads:
        raise reader.refuse(
            "num_kv_heads", kv_heads, "the original Falcon architecture is multi-query or multi-head"
        )
    if parallel and norms not in (None, 1):
        raise reader.refuse(
            "num_ln_in_parallel_attn", norms,
            "two norms exist only in the new decoder architecture (transformers fails otherwise)",
        )
    if multi_query:
        reader.take_copy("num_key_value_heads", "multi_query", 1)
        return 1, parallel
    reader.take_copy("num_key_value_heads", "num_kv_heads", heads)
    return heads, parallel


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for Falcon."""
    hidden = reader.take_first(("hidden_size", "n_embed"))
    heads = reader.take("num_attention_heads")
    layers = reader.take("num_hidden_layers")
    head_dim = hidden // heads
    kv_heads, parallel = _attention_layout(reader, heads)
    max_positions = reader.take("max_position_embeddings", 2048)
    rope = read_rope_parameters(reader)
    # Which linears have biases, and which norms a layer has, convert reads off the checkpoint's
    # tensor names (transformers saves exactly the ones the config asks for).
    reader.take("bias", False)
    # Falcon's first configs carry this Bloom field; transformers' Falcon ignores it, and the
    # original code reads the residual from the normed input only when it is true.
    reader.expect("apply_residual_connection_post_layernorm", [False], False)
    settings: dict = {}
    if reader.take("alibi", False):
        # The rotary settings are unused then (transformers builds the table and never reads it).
        settings.update(
            position="alibi",
            alibi_slopes=_round_to_bfloat16(alibi_slopes(heads)),
            alibi_bfloat16=True,
            # Falcon scales (q.k + alibi) by 1/sqrt(head_dim); Bloom scales q.k alone.
            alibi_scale=head_dim**-0.5,
        )
    else:
        partial = rope.pop("partial_rotary_factor", 1.0)
        if partial != 1.0:
            raise reader.refuse("partial_rotary_factor", partial, "Falcon rotates whole heads")
        table, max_positions = rope_table(rope, head_dim, max_positions, reader.architecture)
        settings.update(position="rope", rotary_dim=head_dim, rope_table=table)
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers, num_kv_heads=kv_heads,
        intermediate_size=ConfigField("ffn_hidden_size", 4 * hidden),
        max_positions=max_positions,
        norm="layer", norm_eps=ConfigField("layer_norm_epsilon", 1e-5),
        activation=ConfigField("activation"), gated_mlp=False,
        tie_embeddings=ConfigField("tie_word_embeddings", True),
        parallel_residual=parallel,
        **settings,
    )


def _split_grouped_qkv(fused: dict, config: DecoderConfig) -> dict:
    """Falcon's fused q/k/v ``[kv group, (its query heads, key, value), head_dim]`` as the
    decoder's q, k and v (query heads in group order, the decoder's head order)."""
    kv_heads, head_dim = config.num_kv_heads, config.head_dim
    group = config.num_heads // kv_heads
    parts = {"q": slice(0, group), "k": slice(group, group + 1), "v": slice(group + 1, group + 2)}
    kernel = fused["kernel"].reshape(config.hidden_size, kv_heads, group + 2, head_dim)
    out = {}
    for name, rows in parts.items():
        out[name] = {"kernel": kernel[:, :, rows, :].reshape(config.hidden_size, -1)}
        if "bias" in fused:
            out[name]["bias"] = fused["bias"].reshape(kv_heads, group + 2, head_dim)[:, rows].reshape(-1)
    return out


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``transformer.h.{i}.self_attention.query_key_value`` etc. onto the decoder's params."""

    def norms(prefix: str) -> dict:
        if not config.parallel_residual:
            return {
                "attn_norm": norm_params(weights, f"{prefix}.input_layernorm", True),
                "mlp_norm": norm_params(weights, f"{prefix}.post_attention_layernorm", True),
            }
        if f"{prefix}.ln_attn.weight" in weights:
            return {
                "attn_norm": norm_params(weights, f"{prefix}.ln_attn", True),
                "mlp_norm": norm_params(weights, f"{prefix}.ln_mlp", True),
            }
        # One norm read by both branches of the parallel block: duplicated, so the decoder's
        # MLP norm computes exactly the same numbers.
        shared = norm_params(weights, f"{prefix}.input_layernorm", True)
        return {"attn_norm": shared, "mlp_norm": {name: array.copy() for name, array in shared.items()}}

    def layer(i: int) -> dict:
        prefix = f"transformer.h.{i}"
        fused = torch_linear(weights, f"{prefix}.self_attention.query_key_value", dtype)
        return {
            **norms(prefix),
            **_split_grouped_qkv(fused, config),
            **torch_linears(
                weights, dtype, o=f"{prefix}.self_attention.dense",
                up=f"{prefix}.mlp.dense_h_to_4h", down=f"{prefix}.mlp.dense_4h_to_h",
            ),
        }

    return assemble_params(
        weights, config, dtype, layer,
        embed="transformer.word_embeddings.weight",
        final_norm=norm_params(weights, "transformer.ln_f", True),
    )
