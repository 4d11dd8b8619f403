"""Reading config.json as transformers writes it: the configs that transformers 4 and 5 save for
every registered architecture (tests/fixtures/configs, written by
scripts/save_reference_configs.py) translate, to the same decoder under either version; fields
that restate another (aliases, derived copies) are accepted when they agree and refused, naming
both, when they do not; and impossible values (a size that is not a positive integer, heads
that do not divide the width) fail validation in one line naming the model, field and value."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from jaxmap.errors import UnsupportedModelError
from jaxmap.jobs import score_job
from jaxmap.models import ARCHITECTURES, translate_config

from conftest import save_random_model, tiny_llama_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "configs"
VERSIONS = sorted(path.name for path in FIXTURES.iterdir() if path.is_dir())
SAVED = sorted((version, path.stem) for version in VERSIONS for path in (FIXTURES / version).glob("*.json"))


def saved(version: str, name: str) -> dict:
    return json.loads((FIXTURES / version / f"{name}.json").read_text())


def test_fixtures_cover_every_architecture_under_both_major_versions():
    assert {version.split("-")[1].split(".")[0] for version in VERSIONS} >= {"4", "5"}, VERSIONS
    for version in VERSIONS:
        types = {saved(version, name)["model_type"] for v, name in SAVED if v == version}
        assert types == {a.model_type for a in ARCHITECTURES.values()}, version


@pytest.mark.parametrize("version, name", SAVED)
def test_saved_configs_translate(version, name):
    config = saved(version, name)
    assert config["transformers_version"] == version.removeprefix("transformers-")
    translate_config(config, f"{version}/{name}")


@pytest.mark.parametrize("name", sorted({name for _, name in SAVED}))
def test_every_version_translates_to_the_same_decoder(name):
    """The script builds each file from the same settings under every version, so the decoders
    must agree although the files do not (rope_theta or rope_parameters, num_key_value_heads
    or not ...)."""
    decoders = {version: translate_config(saved(version, name), name)[1] for version in VERSIONS}
    first = decoders[VERSIONS[0]]
    assert all(decoder == first for decoder in decoders.values()), decoders


FALCON = ["falcon", "falcon.multi_query", "falcon.multi_head"]


@pytest.mark.parametrize("name", FALCON)
def test_falcon_kv_heads_saved_by_transformers_5_are_accepted_and_checked(name):
    """transformers 5 saves the kv heads it derives as num_key_value_heads beside num_kv_heads
    (issue 21); for multi-query models the two differ (1 and the head count)."""
    config = saved("transformers-5.25.0", name)
    kv_heads = config["num_key_value_heads"]
    assert translate_config(config, name)[1].num_kv_heads == kv_heads
    source = "multi_query" if name == "falcon.multi_query" else "num_kv_heads"
    with pytest.raises(UnsupportedModelError, match=f"'num_key_value_heads' = {kv_heads + 1} contradicts '{source}'"):
        translate_config({**config, "num_key_value_heads": kv_heads + 1}, name)


def test_gpt_neox_rope_fields_saved_by_transformers_4_must_agree_with_the_original_ones():
    config = saved("transformers-4.57.6", "gpt_neox")
    assert config["rope_theta"] == config["rotary_emb_base"]
    assert config["partial_rotary_factor"] == config["rotary_pct"]
    with pytest.raises(UnsupportedModelError, match="'rope_theta' = 500 contradicts 'rotary_emb_base'"):
        translate_config({**config, "rope_theta": 500}, "gpt_neox")
    with pytest.raises(UnsupportedModelError, match="'partial_rotary_factor' = 0.5 contradicts 'rotary_pct'"):
        translate_config({**config, "partial_rotary_factor": 0.5}, "gpt_neox")


def _alias_cases():
    """(version, file, alias, field) for every attribute_map entry of the file's config class
    of which the file holds exactly one side."""
    cases = []
    for version, name in SAVED:
        config = saved(version, name)
        aliases = transformers.CONFIG_MAPPING[config["model_type"]].attribute_map
        for alias, field in aliases.items():
            if (alias in config) != (field in config):
                cases.append((version, name, *((alias, field) if field in config else (field, alias))))
    return cases


ALIAS_CASES = _alias_cases()


def test_aliases_are_exercised():
    assert {name.split(".")[0] for _, name, _, _ in ALIAS_CASES} >= {
        "gpt2", "gptj", "codegen", "gpt_bigcode", "gpt_neo", "xglm", "bloom", "mpt", "mixtral", "qwen3_moe",
    }


@pytest.mark.parametrize("version, name, added, present", ALIAS_CASES)
def test_an_alias_beside_its_field_is_accepted_when_equal_and_refused_naming_both_otherwise(
    version, name, added, present
):
    """Every name that transformers' attribute_map declares for a field (``n_embd`` for
    ``hidden_size`` ...) may appear beside it in a config.json written by hand or by other
    tools: jaxmap reads it as the same field."""
    config = saved(version, name)
    expected = translate_config(config, name)[1]
    value = config[present]
    assert translate_config({**config, added: value}, name)[1] == expected
    with pytest.raises(UnsupportedModelError) as refused:
        translate_config({**config, added: 2 * value}, name)
    assert f"'{added}'" in str(refused.value) and f"'{present}'" in str(refused.value)


# Fields holding the width, head count, layer count and vocabulary size under their various names.
SIZES = (
    "hidden_size", "n_embd", "d_model", "num_attention_heads", "n_head", "n_heads", "num_heads",
    "attention_heads", "num_hidden_layers", "n_layer", "n_layers", "num_layers", "vocab_size",
)


@pytest.mark.parametrize("name", sorted({name for _, name in SAVED}))
@pytest.mark.parametrize("bad", ["abc", 0, -64, 12.5, True])
def test_a_size_that_is_not_a_positive_integer_is_refused_by_name(name, bad):
    config = saved(VERSIONS[-1], name)
    fields = [field for field in SIZES if field in config]
    assert len(fields) == 4, fields
    for field in fields:
        with pytest.raises(UnsupportedModelError, match=f"'{field}' = {bad!r} is not a positive integer"):
            translate_config({**config, field: bad}, name)


@pytest.mark.parametrize("name", ["gemma2", "gemma3_text"])
@pytest.mark.parametrize("bad", [0, 0.0, -256, "abc", True, float("nan"), float("inf")])
def test_a_query_pre_attn_scalar_that_is_not_a_positive_number_is_refused_by_name(name, bad):
    """Gemma 2 and 3 scale attention by its -1/2 power: 0 once crashed with ZeroDivisionError."""
    config = saved(VERSIONS[-1], name)
    assert "query_pre_attn_scalar" in config
    with pytest.raises(UnsupportedModelError, match=re.escape(f"'query_pre_attn_scalar' = {bad!r} is not a positive number")):
        translate_config({**config, "query_pre_attn_scalar": bad}, name)
    _, decoder = translate_config({**config, "query_pre_attn_scalar": 6.25}, name)
    assert decoder.attn_scale == 0.4


def test_heads_that_do_not_divide_the_width_or_each_other_are_refused_naming_both():
    config = saved(VERSIONS[-1], "llama")
    assert config["head_dim"] == 16
    # With head_dim given, the width need not be a multiple of the heads (q_proj maps 64 to 80).
    with pytest.raises(UnsupportedModelError, match="'num_attention_heads' = 5 and 'num_key_value_heads' = 2"):
        translate_config({**config, "num_attention_heads": 5}, "llama")
    translate_config({**config, "num_attention_heads": 6}, "llama")
    with pytest.raises(UnsupportedModelError, match="'hidden_size' = 64 and 'num_attention_heads' = 6"):
        translate_config({**config, "num_attention_heads": 6, "head_dim": None}, "llama")
    falcon = saved(VERSIONS[-1], "falcon")
    with pytest.raises(UnsupportedModelError, match="'hidden_size' = 64 and 'num_attention_heads' = 5"):
        translate_config({**falcon, "num_attention_heads": 5}, "falcon")
    with pytest.raises(UnsupportedModelError, match="'num_attention_heads' = 8 and 'num_kv_heads' = 3"):
        translate_config({**falcon, "num_kv_heads": 3}, "falcon")


def test_more_experts_per_token_than_experts_is_refused_by_name():
    config = saved(VERSIONS[-1], "mixtral")
    with pytest.raises(UnsupportedModelError, match="'num_experts_per_tok' = 5: more than the 4 experts"):
        translate_config({**config, "num_experts_per_tok": 5}, "mixtral")


BAD_EDITS = {
    "not-a-number": ({"hidden_size": "abc"}, "'hidden_size' = 'abc' is not a positive integer"),
    "negative": ({"intermediate_size": -96}, "'intermediate_size' = -96 is not a positive integer"),
    "zero-kv-heads": ({"num_key_value_heads": 0}, "'num_key_value_heads' = 0 is not a positive integer"),
    "heads-over-width": (
        {"num_attention_heads": 6, "head_dim": None}, "'hidden_size' = 64 and 'num_attention_heads' = 6"
    ),
    "heads-over-kv-heads": ({"num_attention_heads": 5}, "'num_attention_heads' = 5 and 'num_key_value_heads' = 2"),
}


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> dict[str, Path]:
    """Copies of one tiny Llama model, each with one impossible value written into config.json."""
    root = tmp_path_factory.mktemp("bad-configs")
    good = save_random_model(root / "good", tiny_llama_config())
    models = {}
    for case, (edit, _) in BAD_EDITS.items():
        models[case] = root / case
        shutil.copytree(good, models[case])
        config = json.loads((good / "config.json").read_text())
        (models[case] / "config.json").write_text(json.dumps({**config, **edit}))
    return models


def test_bad_config_values_fail_validation_naming_model_field_and_value(bad_models, text_file, tmp_path):
    out = tmp_path / "s.h5"
    references = [str(bad_models[case]) for case in BAD_EDITS]
    summary = score_job(references, text_file, out, progress=False)
    assert summary.failures.keys() == set(references)
    for case, (_, expected) in BAD_EDITS.items():
        reason = summary.failures[str(bad_models[case])]
        assert expected in reason and "\n" not in reason, (case, reason)
        assert "bug in jaxmap" not in reason, reason
    assert not any(outcome.traceback for outcome in summary.outcomes)

    # The command line: exit 1, each model reported failed with its field, no traceback.
    result = subprocess.run(
        [sys.executable, "-m", "jaxmap.cli", "score", *references, "--texts", str(text_file),
         "--out", str(tmp_path / "cli.h5"), "--quiet"],
        capture_output=True, text=True,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for case, (_, expected) in BAD_EDITS.items():
        failed = [line for line in result.stdout.splitlines() if f"FAILED  {bad_models[case]}: " in line]
        assert len(failed) == 1 and expected in failed[0], (case, result.stdout)
