"""GPTNeoForCausalLM: learned positions, layers alternating global and local (sliding-window)
attention, and no 1/sqrt(head_dim) scaling of the attention scores."""

from __future__ import annotations

from .adapter import ConfigField, decoder_config
from .config_reader import ConfigReader
from .decoder import DecoderConfig, Params
from .weights import WeightSource, assemble_params, norm_params, torch_linears


def _layer_windows(reader: ConfigReader, layers: int) -> tuple[int, ...]:
    """One window per layer: 0 for global attention, window_size for local attention.

    transformers' local mask lets a query see itself and the window_size - 1 keys before it,
    the decoder's convention.
    """
    window = reader.take("window_size", 256)
    types = reader.take("attention_types", [[["global", "local"], 12]])
    expanded = [kind for pattern, repeats in types for _ in range(repeats) for kind in pattern]
    # transformers also saves the expansion; it must agree with attention_types.
    saved = reader.take("attention_layers", expanded)
    if list(saved) != expanded:
        raise reader.refuse("attention_layers", saved, f"attention_types expands to {expanded}")
    if len(expanded) != layers:
        raise reader.refuse("attention_types", types, f"needs {layers} layers, gives {len(expanded)}")
    windows = []
    for kind in expanded:
        if kind not in ("global", "local"):
            raise reader.refuse("attention_types", kind, "jaxmap implements 'global' and 'local'")
        windows.append(window if kind == "local" else 0)
    return tuple(windows)


def translate(reader: ConfigReader) -> DecoderConfig:
    """Config translation for GPT-Neo."""
    hidden = reader.take("hidden_size")
    heads = reader.take_first(("num_heads", "num_attention_heads"))
    layers = reader.take_first(("num_layers", "num_hidden_layers"))
    for training_only in ("resid_dropout", "embed_dropout", "gradient_checkpointing"):
        reader.take(training_only, None)
    return decoder_config(
        reader, hidden=hidden, heads=heads, layers=layers,
        intermediate_size=ConfigField("intermediate_size", 4 * hidden),
        max_positions=ConfigField("max_position_embeddings"),
        norm="layer", norm_eps=ConfigField("layer_norm_epsilon", 1e-5),
        activation=ConfigField("activation_function"), gated_mlp=False,
        # GPT-Neo was trained without scaling the attention scores.
        position="learned", attn_scale=1.0,
        tie_embeddings=ConfigField("tie_word_embeddings", True),
        layer_window=_layer_windows(reader, layers),
    )


def convert(weights: WeightSource, config: DecoderConfig, dtype) -> Params:
    """Map ``transformer.h.{i}.attn.attention.q_proj`` etc. onto the decoder's params."""

    def layer(i: int) -> dict:
        prefix = f"transformer.h.{i}"
        attention = f"{prefix}.attn.attention"
        return {
            "attn_norm": norm_params(weights, f"{prefix}.ln_1", True),
            "mlp_norm": norm_params(weights, f"{prefix}.ln_2", True),
            **torch_linears(
                weights, dtype, bias=False,
                q=f"{attention}.q_proj", k=f"{attention}.k_proj", v=f"{attention}.v_proj",
            ),
            **torch_linears(
                weights, dtype, bias=True, o=f"{attention}.out_proj",
                up=f"{prefix}.mlp.c_fc", down=f"{prefix}.mlp.c_proj",
            ),
        }

    return assemble_params(
        weights, config, dtype, layer,
        embed="transformer.wte.weight",
        final_norm=norm_params(weights, "transformer.ln_f", True),
        # Old checkpoints carry the (local) causal-mask buffers as tensors.
        ignorable=(r"transformer\.h\.\d+\.attn\.attention\.(masked_)?bias",),
        extra={"positions": weights("transformer.wpe.weight", dtype)},
    )
