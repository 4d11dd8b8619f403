"""A huge text costs memory in proportion to the tokens kept, not to its length."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxmap
from jaxmap import tokenization
from jaxmap.errors import TextSetError
from jaxmap.texts import TextSet
from jaxmap.tokenization import tokenize

from conftest import CORPUS, build_tokenizer


class _Recording:
    """A tokenizer that remembers the longest string it was asked to encode."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.longest = 0

    def __call__(self, strings, **kwargs):
        self.longest = max(self.longest, *(len(s) for s in strings))
        return self._tokenizer(strings, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"), adds_bos=True)


def _long_text(characters: int) -> str:
    rng = np.random.default_rng(0)
    words = " ".join(CORPUS).split()
    text = " ".join(words[i] for i in rng.integers(0, len(words), characters // 4))
    return text[:characters]


@pytest.mark.parametrize("policy", ["full", "paper"])
def test_the_kept_tokens_of_a_cut_text_equal_the_whole_texts(tokenizer, policy):
    keep = 40
    texts = TextSet.from_texts([_long_text(400_000), "short text", _long_text(3_000)])
    whole = tokenize(texts, tokenizer, policy)
    recording = _Recording(tokenizer)
    cut = tokenize(texts, recording, policy, keep_tokens=keep)
    longest_token = max(len(t.encode()) for t in tokenizer.get_vocab())
    assert recording.longest <= 4 * (keep + 1) * longest_token < 400_000
    for index in (0, 2):
        assert len(cut[index]) > keep
        np.testing.assert_array_equal(cut[index][: keep + 1], whole[index][: keep + 1])
    np.testing.assert_array_equal(cut[1], whole[1])


def test_rolling_windows_refuse_a_text_past_the_limit_naming_it(tokenizer, monkeypatch):
    monkeypatch.setattr(tokenization, "MAX_ROLLING_TEXT_CHARACTERS", 1_000)
    texts = TextSet(("a", "giant"), ("fine", "x" * 1_001), source="t.jsonl")
    with pytest.raises(TextSetError, match=r"t.jsonl: text 'giant' has 1,001 characters.*jaxmap chunk"):
        tokenize(texts, tokenizer)
    assert len(tokenize(texts, tokenizer, keep_tokens=8)) == 2


def test_a_thirty_megabyte_line_scores_as_its_own_prefix(tiny_models, tmp_path):
    giant = _long_text(30_000_000)
    texts = tmp_path / "t.jsonl"
    texts.write_text(
        json.dumps({"id": "giant", "text": giant}) + "\n" + json.dumps({"id": "prefix", "text": giant[:50_000]}) + "\n"
    )
    store = jaxmap.score([str(tiny_models[0])], texts, out=tmp_path / "s.h5", progress=False)
    assert store.truncated[0].all()
    assert store.loglik[0, 0] == store.loglik[0, 1]
    assert store.ntokens[0, 0] == store.ntokens[0, 1]
