"""Cost-balanced shards (`jaxmap score --shard I/N --shard-by cost`): balance, coverage, the
median for unreadable configs, and independent processes agreeing on the plan. Configs only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxmap.errors import JaxmapError
from jaxmap.planning import assign_shards, plan_shards
from jaxmap.texts import TextSet

TEXTS = TextSet.from_texts(["The quick brown fox jumps over the lazy dog. " * 20] * 30)


def _llama(directory: Path, width: int, layers: int) -> str:
    """A config-only Llama directory (no weights, no tokenizer): all a cost estimate reads."""
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=width, intermediate_size=width * 11 // 4, num_hidden_layers=layers,
        num_attention_heads=width // 64, num_key_value_heads=width // 64, vocab_size=32000,
        max_position_embeddings=2048,
    ).to_dict()
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))
    return str(directory)


@pytest.fixture(scope="module")
def family_list(tmp_path_factory) -> list[str]:
    """One large model, then families of four listed largest first, as model lists often are:
    every fourth entry is a family's largest, so cutting by position piles them up on one shard."""
    root = tmp_path_factory.mktemp("configs")
    listed = [_llama(root / "large", 2048, 16)]
    listed += [_llama(root / f"tiny-0-{j}", 256, 4) for j in range(3)]
    for family in range(1, 10):
        listed.append(_llama(root / f"medium-{family}", 1024, 16))
        listed += [_llama(root / f"tiny-{family}-{j}", 256, 4) for j in range(3)]
    return listed


def test_cost_shards_are_balanced_where_index_shards_are_not(family_list):
    plan = plan_shards(family_list, 4, TEXTS)
    ideal = 1 / 4
    assert max(plan.share(i) for i in range(4)) <= 1.1 * ideal
    costs = [c.flops for c in plan.costs]
    by_index = plan_shards(family_list, 4, by="index")
    heaviest = max(sum(costs[i] for i in shard) for shard in by_index.shards) / sum(costs)
    assert heaviest >= 2 * ideal
    # The large model costs more than any other, and the medium ones more than the tiny ones.
    assert costs[0] > max(costs[1:]) and min(costs[4::4]) > max(costs[1:4])


def test_every_model_is_on_exactly_one_shard(family_list):
    for count in (1, 3, 7, 50):
        plan = plan_shards(family_list, count, TEXTS)
        listed = [m for i in range(count) for m in plan.models(i)]
        assert sorted(listed) == sorted(family_list)
        assert all(plan.models(i) == [m for m in family_list if m in plan.models(i)] for i in range(count)), (
            "each shard keeps the list's order"
        )


def test_longest_first_to_the_least_loaded_shard_with_ties_by_position():
    # Worked by hand: 9 (position 1) to shard 0; the two 5s tie, position 0 first, to shards 1
    # and 2; 4 to shard 1 (tied at 5 with shard 2, the lower number); 3 and 2 to shard 2 (8,
    # then 10); 1 to shard 0 (tied at 9 with shard 1, the lower number).
    assert assign_shards([5, 9, 4, 5, 3, 2, 1], 3) == [[1, 6], [0, 2], [3, 4, 5]]
    assert assign_shards([1, 1, 1, 1, 1], 2) == [[0, 2, 4], [1, 3]], "equal costs cut like the index rule"


def test_an_unreadable_config_costs_the_median(family_list, tmp_path):
    broken = tmp_path / "no-config"
    broken.mkdir()
    listed = family_list[:6] + [str(broken)]
    plan = plan_shards(listed, 2, TEXTS)
    read = sorted(c.flops for c in plan.costs[:6])
    assert plan.costs[6].flops == read[2] and "config.json" in plan.costs[6].problem
    lines = plan.lines(0)
    assert any("costed at the median" in line and str(broken) in line for line in lines)


def test_spellings_of_one_model_count_once(family_list, monkeypatch):
    first = Path(family_list[0])
    monkeypatch.chdir(first.parent)
    plan = plan_shards([family_list[0], f"./{first.name}/", *family_list[1:4]], 2, TEXTS)
    assert sorted(m for i in range(2) for m in plan.models(i)) == sorted(family_list[:4])


def test_bad_rules_are_refused(family_list):
    with pytest.raises(JaxmapError, match="unknown shard rule 'size'; choose one of cost, index"):
        plan_shards(family_list, 2, TEXTS, by="size")


_SHARD_PROCESS = """
import json, sys
from jaxmap.planning import plan_shards
from jaxmap.texts import TextSet
listed, index = json.loads(sys.argv[1]), int(sys.argv[2])
plan = plan_shards(listed, 2, TextSet.from_texts(json.loads(sys.argv[3])))
print(json.dumps({"models": plan.models(index), "fingerprint": plan.fingerprint}))
"""


def test_two_shard_processes_agree_without_talking(family_list, tmp_path):
    # Another order than the list's: a plan that depended on anything but its inputs (hash
    # seeds, dictionaries, timing) would show here.
    listed = family_list[5:] + family_list[:5]
    environment = {**os.environ, "PYTHONHASHSEED": "random", "JAX_PLATFORMS": "cpu"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _SHARD_PROCESS, json.dumps(listed), str(index), json.dumps(list(TEXTS.texts))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=tmp_path,
        )
        for index in range(2)
    ]
    answers = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        answers.append(json.loads(out))
    assert answers[0]["fingerprint"] == answers[1]["fingerprint"]
    assert not set(answers[0]["models"]) & set(answers[1]["models"])
    assert sorted(answers[0]["models"] + answers[1]["models"]) == sorted(listed)
    here = plan_shards(listed, 2, TEXTS)
    assert [answers[0]["models"], answers[1]["models"]] == [here.models(0), here.models(1)]
