"""Scoring options are validated once, where they come in, and travel whole; a model's config
is translated once per checkpoint (issue 24)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from jaxmap.errors import JaxmapError
from jaxmap.scoring_options import ScoringOptions


@pytest.mark.parametrize("settings,message", [
    ({"dtype": "fp8"}, "unknown dtype 'fp8'; choose one of float32, bfloat16, float16"),
    ({"bos_policy": "none"}, "unknown BOS policy 'none'; choose one of full, paper"),
    ({"long_texts": "sliding"}, "unknown long-text policy 'sliding'; choose one of truncate, rolling"),
    ({"packing": "tight"}, "unknown packing 'tight'; choose one of auto, pack, buckets"),
    ({"stride": 8}, "stride applies to rolling windows: add long_texts='rolling' (--long-texts rolling)"),
    ({"long_texts": "rolling", "stride": 0}, "stride must be a positive number of tokens, got 0"),
    ({"long_texts": "rolling", "stride": True}, "stride must be a positive number of tokens, got True"),
    ({"batch_tokens": 8}, "batch_tokens must be at least 16, got 8"),
    ({"attention": "flash"}, "unknown attention path 'flash'; choose auto or one of dense, blockwise, xla_fused, pallas"),
    ({"logprob": "triton"}, "unknown log-prob kernel 'triton'; choose one of fused, pallas"),
])
def test_a_bad_setting_fails_when_the_options_are_built_in_one_line(settings, message):
    with pytest.raises(JaxmapError) as caught:
        ScoringOptions(**settings)
    assert str(caught.value) == message


def test_the_store_settings_name_the_stride_of_rolling_windows():
    assert ScoringOptions().store_settings == {"bos_policy": "full", "dtype": "float32", "long_texts": "truncate"}
    rolling = ScoringOptions(long_texts="rolling", stride=12, bos_policy="paper")
    assert rolling.store_settings == {"bos_policy": "paper", "dtype": "float32", "long_texts": "rolling:stride=12"}
    with pytest.raises(Exception):
        rolling.stride = 3  # frozen: what was validated is what is used


def test_a_keyword_contradicting_the_options_is_refused_before_anything_runs(tmp_path):
    from jaxmap.jobs import score_job

    options = ScoringOptions(packing="buckets")
    with pytest.raises(JaxmapError) as caught:
        score_job(["no-such-model"], ["a text"], tmp_path / "s.h5", options=options, packing="pack", progress=False)
    assert str(caught.value) == (
        "score_job: the keyword(s) packing='pack' contradict options (packing='buckets'); "
        "give each setting either as a keyword or in options"
    )
    assert not list(tmp_path.iterdir()), "nothing was written"
    # A keyword left at its default, or equal to the options', is no contradiction.
    assert ScoringOptions.from_arguments("f", options, packing="auto", dtype="float32") is options
    assert ScoringOptions.from_arguments("f", options, packing="buckets") is options


def test_a_job_translates_each_config_once_and_scores_with_its_options(tiny_models, text_file, tmp_path, monkeypatch):
    from jaxmap.checkpoints import translated
    from jaxmap.jobs import score_job
    from jaxmap.store import open_store

    calls = []
    real = translated.translate_config

    def counting(hf_config, model):
        calls.append(model)
        return real(hf_config, model)

    monkeypatch.setattr(translated, "translate_config", counting)
    # Copies: checkpoints no earlier test has translated.
    references = [str(shutil.copytree(m, tmp_path / m.name)) for m in tiny_models[:2]]
    options = ScoringOptions(batch_tokens=128, packing="buckets", bos_policy="paper")
    summary = score_job(references, text_file, tmp_path / "s.h5", options=options, progress=False)
    assert not summary.failures
    assert Counter(calls) == {reference: 1 for reference in references}
    store = open_store(tmp_path / "s.h5")
    assert store.settings["bos_policy"] == "paper"
    assert all(meta["batching"].startswith("buckets") for meta in store.model_meta)


def test_a_changed_config_is_translated_anew(tiny_models, tmp_path):
    from jaxmap.checkpoints import resolve
    from jaxmap.checkpoints.translated import translated_config

    directory = shutil.copytree(tiny_models[0], tmp_path / "model")
    checkpoint = resolve(str(directory))
    assert translated_config(checkpoint)[1].num_layers == 2
    config = json.loads((directory / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (directory / "config.json").write_text(json.dumps(config))
    # Resolved again (another revision), and as the checkpoint resolved before the change.
    assert translated_config(resolve(str(directory)))[1].num_layers == 1
    assert translated_config(checkpoint)[1].num_layers == 1
