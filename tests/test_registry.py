"""The registries agree: the GGUF converter's architectures against jaxmap.models.ARCHITECTURES,
and README's architecture table against the one generated from ARCHITECTURES."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxmap.checkpoints import gguf
from jaxmap.checkpoints.gguf.reader import GGUFSource
from jaxmap.models import ARCHITECTURES, translate_config

ROOT = Path(__file__).resolve().parents[1]


def synthetic_source(architecture: str) -> GGUFSource:
    """The metadata of a small GGUF file of ``architecture`` (no tensor data: the config builders
    only look at tensor names)."""
    values = {
        "embedding_length": 64,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "block_count": 2,
        "feed_forward_length": 96,
        "context_length": 128,
        "attention.layer_norm_rms_epsilon": 1e-6,
        "rope.freq_base": 10000.0,
        "attention.sliding_window": 8,
    }
    metadata = {f"{architecture}.{key}": value for key, value in values.items()}
    metadata.update({
        "general.architecture": architecture,
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(300)],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    })
    return GGUFSource(Path(f"synthetic-{architecture}.gguf"), metadata, {}, architecture)


@pytest.mark.parametrize("architecture", gguf.SUPPORTED_ARCHITECTURES)
def test_every_gguf_architecture_converts_to_a_registered_class_with_that_gguf_name(architecture):
    config = gguf.hf_config(synthetic_source(architecture))
    (hf_class,) = config["architectures"]
    assert hf_class in ARCHITECTURES, (
        f"GGUF {architecture!r} converts to {hf_class}, which jaxmap.models.ARCHITECTURES lacks"
    )
    registered = ARCHITECTURES[hf_class]
    assert registered.gguf == architecture, (
        f"ARCHITECTURES[{hf_class!r}].gguf is {registered.gguf!r}; the GGUF converter turns "
        f"{architecture!r} into it"
    )
    assert config["model_type"] == registered.model_type
    # The converted config is one the adapter accepts, every field understood.
    name, decoder_config = translate_config(config, f"synthetic {architecture} GGUF")
    assert name == hf_class and decoder_config.num_layers == 2


def test_every_registered_gguf_name_is_an_architecture_the_converter_knows():
    for name, architecture in ARCHITECTURES.items():
        if architecture.gguf is None:
            continue
        assert architecture.gguf in gguf.CONVERTERS, (
            f"ARCHITECTURES[{name!r}].gguf = {architecture.gguf!r}, which the GGUF converter "
            f"does not convert (it knows {', '.join(gguf.SUPPORTED_ARCHITECTURES)})"
        )
        assert gguf.CONVERTERS[architecture.gguf].hf_class == name


def test_unknown_gguf_architecture_is_refused_by_name():
    with pytest.raises(gguf.GGUFConversionError, match=r"synthetic-mamba\.gguf.*'mamba'.*not supported"):
        gguf.hf_config(synthetic_source("mamba"))


def test_readme_architecture_table_is_generated_from_the_registry():
    from jaxmap.models.coverage import TABLE_END, TABLE_START, coverage_table

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert TABLE_START in readme and TABLE_END in readme, "README lost its architecture-table markers"
    current = readme[readme.index(TABLE_START) + len(TABLE_START) : readme.index(TABLE_END)].strip()
    assert current == coverage_table(), (
        "README.md's architecture table is not the one jaxmap.models.ARCHITECTURES gives: "
        "run `python scripts/coverage_table.py`"
    )


def test_coverage_counts_only_registered_types_with_known_counts():
    from jaxmap.models.coverage import PAPER_COUNTS, PAPER_MODEL_COUNT, coverage_table, covered_paper_models

    assert sum(PAPER_COUNTS.values()) <= PAPER_MODEL_COUNT
    only_llama = {"LlamaForCausalLM": ARCHITECTURES["LlamaForCausalLM"]}
    assert covered_paper_models(only_llama) == PAPER_COUNTS["llama"]
    assert covered_paper_models({}) == 0
    # A registered type outside the paper's known counts adds nothing to the lower bound.
    with_gpt2 = {**only_llama, "GPT2LMHeadModel": ARCHITECTURES["GPT2LMHeadModel"]}
    assert covered_paper_models(with_gpt2) == PAPER_COUNTS["llama"]
    table = coverage_table(only_llama)
    assert "| LlamaForCausalLM | `llama` | yes (`llama`) | 587 |" in table
    assert f"at least **587 of 1,018 models ({100 * 587 / 1018:.1f}%)**" in table
    assert "`mistral` (232)" in table  # listed among the known types not covered


def test_a_new_architecture_makes_the_readme_table_stale():
    from dataclasses import replace

    from jaxmap.models.coverage import coverage_table

    llama = ARCHITECTURES["LlamaForCausalLM"]
    extended = {**ARCHITECTURES, "NewForCausalLM": replace(llama, name="NewForCausalLM", model_type="new")}
    assert "| NewForCausalLM | `new` | yes (`llama`) | — |" in coverage_table(extended)
    assert coverage_table(extended) != coverage_table()
