#!/usr/bin/env python
"""Save one small config.json per registered architecture with the installed transformers.

    python scripts/save_reference_configs.py            # into tests/fixtures/configs/transformers-<version>/

Each file is what ``config.save_pretrained`` writes for a tiny model of that architecture (the
sizes of the parity tests), named ``<model_type>.json``, or ``<model_type>.<variant>.json`` for
the variants whose saved fields differ in kind (Falcon's three attention layouts, GPT-BigCode's
multi-head form). tests/test_config_reading.py translates every file, so running this under
another transformers version (a separate virtual environment; no torch needed) shows whether
jaxmap still reads what that version writes. The script reads no jaxmap code: it must run where
only transformers is installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import transformers

# Sizes shared by the parity tests; each architecture spells them in its config class's own
# field names (the ones both transformers 4 and 5 accept).
SMALL = dict(
    vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=256,
)
GPT2_STYLE = dict(vocab_size=300, n_embd=64, n_inner=96, n_layer=2, n_head=4, n_positions=256)
MOE = dict(
    vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, num_experts_per_tok=2,
)
# Multi-head latent attention and DeepSeek's experts.
MLA = dict(
    SMALL, num_key_value_heads=4, moe_intermediate_size=24, kv_lora_rank=24, qk_nope_head_dim=12,
    qk_rope_head_dim=8, v_head_dim=10, num_experts_per_tok=2, first_k_dense_replace=1,
)

# file name -> (model_type, HF architecture class, config keyword arguments)
REFERENCES = {
    "llama": ("llama", "LlamaForCausalLM", dict(SMALL, num_key_value_heads=2)),
    "mistral": ("mistral", "MistralForCausalLM", dict(SMALL, num_key_value_heads=2, head_dim=16, sliding_window=7)),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", dict(SMALL, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", dict(SMALL, num_key_value_heads=2, head_dim=16)),
    "gpt_neox": ("gpt_neox", "GPTNeoXForCausalLM", dict(SMALL, use_parallel_residual=True)),
    "gpt2": ("gpt2", "GPT2LMHeadModel", GPT2_STYLE),
    "gemma": ("gemma", "GemmaForCausalLM", dict(SMALL, num_key_value_heads=1, head_dim=16)),
    "gemma2": (
        "gemma2", "Gemma2ForCausalLM",
        dict(SMALL, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=5),
    ),
    "gemma3_text": (
        "gemma3_text", "Gemma3ForCausalLM",
        dict(SMALL, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=6),
    ),
    "opt": (
        "opt", "OPTForCausalLM",
        dict(hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=300,
             max_position_embeddings=256),
    ),
    "xglm": (
        "xglm", "XGLMForCausalLM",
        dict(d_model=64, ffn_dim=96, num_layers=2, attention_heads=4, vocab_size=300, max_position_embeddings=256),
    ),
    "gpt_neo": (
        "gpt_neo", "GPTNeoForCausalLM",
        dict(hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, vocab_size=300,
             max_position_embeddings=256, attention_types=[[["global", "local"], 1]], window_size=5),
    ),
    "gpt_bigcode": ("gpt_bigcode", "GPTBigCodeForCausalLM", GPT2_STYLE),
    "gpt_bigcode.multi_head": ("gpt_bigcode", "GPTBigCodeForCausalLM", dict(GPT2_STYLE, multi_query=False)),
    "starcoder2": ("starcoder2", "Starcoder2ForCausalLM", dict(SMALL, num_key_value_heads=2)),
    "gptj": ("gptj", "GPTJForCausalLM", dict(GPT2_STYLE, rotary_dim=8)),
    "codegen": ("codegen", "CodeGenForCausalLM", dict(GPT2_STYLE, n_ctx=256, rotary_dim=8)),
    "phi": ("phi", "PhiForCausalLM", dict(SMALL)),
    "phi3": ("phi3", "Phi3ForCausalLM", dict(SMALL, pad_token_id=None)),
    "stablelm": ("stablelm", "StableLmForCausalLM", dict(SMALL, num_key_value_heads=4)),
    "mixtral": ("mixtral", "MixtralForCausalLM", dict(MOE, intermediate_size=48, num_local_experts=4)),
    "qwen2_moe": (
        "qwen2_moe", "Qwen2MoeForCausalLM",
        dict(MOE, intermediate_size=96, moe_intermediate_size=40, shared_expert_intermediate_size=56, num_experts=4),
    ),
    "qwen3_moe": (
        "qwen3_moe", "Qwen3MoeForCausalLM",
        dict(MOE, head_dim=16, intermediate_size=96, moe_intermediate_size=40, num_experts=4),
    ),
    "deepseek_v2": (
        "deepseek_v2", "DeepseekV2ForCausalLM",
        dict(MLA, q_lora_rank=None, n_routed_experts=4, n_shared_experts=2, topk_method="greedy"),
    ),
    "deepseek_v3": (
        "deepseek_v3", "DeepseekV3ForCausalLM",
        dict(MLA, q_lora_rank=20, n_routed_experts=8, n_shared_experts=1, n_group=4, topk_group=2),
    ),
    "olmo": ("olmo", "OlmoForCausalLM", dict(SMALL, num_key_value_heads=2)),
    "olmo2": ("olmo2", "Olmo2ForCausalLM", dict(SMALL, num_key_value_heads=2)),
    "bloom": ("bloom", "BloomForCausalLM", dict(hidden_size=48, n_head=6, n_layer=2, vocab_size=300)),
    # Falcon's three attention layouts: transformers 5 derives a different num_key_value_heads
    # for each (num_kv_heads, 1, num_kv_heads).
    "falcon": (
        "falcon", "FalconForCausalLM",
        dict(hidden_size=64, num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True,
             num_hidden_layers=2, vocab_size=300, ffn_hidden_size=96, max_position_embeddings=256),
    ),
    "falcon.multi_query": (
        "falcon", "FalconForCausalLM",
        dict(hidden_size=64, num_attention_heads=4, multi_query=True, num_hidden_layers=2,
             vocab_size=300, ffn_hidden_size=96, max_position_embeddings=256),
    ),
    "falcon.multi_head": (
        "falcon", "FalconForCausalLM",
        dict(hidden_size=64, num_attention_heads=4, multi_query=False, parallel_attn=False, alibi=True,
             bias=True, num_hidden_layers=2, vocab_size=300, ffn_hidden_size=96, max_position_embeddings=256),
    ),
    "mpt": ("mpt", "MptForCausalLM", dict(d_model=48, n_heads=6, n_layers=2, vocab_size=300, max_seq_len=256)),
}


def save(name: str, out_dir: Path) -> Path:
    model_type, architecture, settings = REFERENCES[name]
    config = transformers.CONFIG_MAPPING[model_type](**settings)
    config.architectures = [architecture]
    with tempfile.TemporaryDirectory() as scratch:
        config.save_pretrained(scratch)
        saved = json.loads((Path(scratch) / "config.json").read_text())
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "configs"
    parser.add_argument("--root", type=Path, default=default, help=f"fixture root (default {default})")
    args = parser.parse_args(argv)
    out_dir = args.root / f"transformers-{transformers.__version__}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in REFERENCES:
        print(save(name, out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
