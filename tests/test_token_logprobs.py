"""Token-level export: ``save_token_logprobs`` / ``jaxmap score --save-token-logprobs`` keeps
every scored token's log-prob (float32, ragged, per-text offsets) beside the per-text sums,
committed with the row (journal, checksum) and readable with plain h5py."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import jaxmap
from conftest import TEXTS, save_random_model, tiny_llama_config
from jaxmap.cli import main
from jaxmap.store import StoreWriter, journal_directory, open_store
from jaxmap.texts import TextSet


def reference_token_logprobs(directory, texts, policy):
    """transformers' (PyTorch, float32) log-prob of every scored token, text by text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    n_ctx = model.config.max_position_embeddings
    out = []
    for text in texts:
        if policy == "paper":
            ids = tokenizer.encode(text)
        else:
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            ids = [start] + tokenizer.encode(text, add_special_tokens=False)
        ids = ids[:n_ctx]  # truncated to the context, as the engine does (and flags)
        if len(ids) < 2:
            out.append(np.zeros(0))
            continue
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        picked = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        out.append(picked.numpy())
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("tokens") / "tiny", tiny_llama_config(), seed=5)


# The engine sums the very float32 values it stores, in float64 and in the same order, so the
# stored sums and a float64 sum of the stored values agree to float64 rounding: 1e-9 nats.
SUM_TOLERANCE = 1e-9
# Parity of one token's log-prob with transformers (the project's per-text bound, 1e-3 nats).
TOKEN_TOLERANCE = 1e-3


@pytest.mark.parametrize("policy", ["full", "paper"])
def test_token_logprobs_sum_to_the_row_and_match_transformers(tiny_model, text_file, tmp_path, policy):
    out = tmp_path / "tokens.h5"
    store = jaxmap.score([str(tiny_model)], text_file, out=out, bos_policy=policy, save_token_logprobs=True, progress=False)
    values = store.token_logprobs[0]
    assert values.dtype == np.float32 and values.shape == (int(store.ntokens[0].sum()),)
    reference = reference_token_logprobs(tiny_model, TEXTS, policy)
    worst = 0.0
    for text, expected in enumerate(reference):
        mine = store.text_token_logprobs(0, text)
        assert mine.shape == expected.shape
        assert abs(mine.astype(np.float64).sum() - store.loglik[0, text]) <= SUM_TOLERANCE
        if expected.size:
            worst = max(worst, float(np.abs(mine - expected).max()))
    assert worst <= TOKEN_TOLERANCE, worst
    # Plain h5py: the job compacted the journal, so the matrix file holds the token arrays.
    with h5py.File(out, "r") as handle:
        offsets, flat = handle["token_offsets"][...], handle["token_logprob"][...]
        loglik, ntokens = handle["loglik"][...], handle["ntokens"][...]
    assert offsets.shape == (1, len(TEXTS) + 1) and flat.dtype == np.float32
    np.testing.assert_array_equal(np.diff(offsets[0]), ntokens[0])
    sums = [flat[offsets[0, j] : offsets[0, j + 1]].astype(np.float64).sum() for j in range(len(TEXTS))]
    np.testing.assert_allclose(sums, loglik[0], rtol=0, atol=SUM_TOLERANCE)


def test_cli_flag_resume_and_rows_without_tokens(tiny_models, tiny_model, text_file, tmp_path, capsys):
    out = tmp_path / "mixed.h5"
    assert main(["score", str(tiny_model), "--texts", str(text_file), "--out", str(out), "--quiet", "--save-token-logprobs"]) == 0
    first = open_store(out)
    # A second model without token log-probs, and a rerun that finds the first one done.
    assert main(["score", str(tiny_model), str(tiny_models[0]), "--texts", str(text_file), "--out", str(out), "--quiet"]) == 0
    assert "1 already in the store" in capsys.readouterr().out
    both = open_store(out)
    assert both.models == [str(tiny_model), str(tiny_models[0])]
    np.testing.assert_array_equal(both.token_logprobs[0], first.token_logprobs[0])
    assert both.token_logprobs[1] is None
    with pytest.raises(jaxmap.StoreError, match="without --save-token-logprobs"):
        both.text_token_logprobs(1, 0)
    with h5py.File(out, "r") as handle:
        assert (handle["token_offsets"][1] == -1).all()
    # drop and merge carry the token arrays along.
    jaxmap.drop(out, [str(tiny_models[0])])
    merged = jaxmap.merge([out], tmp_path / "merged.h5")
    np.testing.assert_array_equal(merged.token_logprobs[0], first.token_logprobs[0])


def test_token_rows_commit_through_the_journal_with_checksums(tmp_path):
    texts = TextSet.from_texts(["a b c", "d", ""])
    path = tmp_path / "journal.h5"
    writer = StoreWriter(path, texts, {"bos_policy": "full", "dtype": "float32"})
    ntokens = np.array([3, 1, 0], np.int32)
    tokens = np.array([-1.5, -2.25, -0.5, -3.0], np.float32)
    loglik = np.array([-4.25, -3.0, 0.0])
    with pytest.raises(jaxmap.StoreError, match="4 token log-probs for 5 scored tokens"):
        writer.append("m", loglik, ntokens + [1, 0, 0], np.zeros(3, bool), {}, token_logprobs=tokens)
    with pytest.raises(jaxmap.StoreError, match="non-finite token"):
        writer.append("m", loglik, ntokens, np.zeros(3, bool), {}, token_logprobs=tokens * np.inf)
    writer.append("m", loglik, ntokens, np.zeros(3, bool), {}, token_logprobs=tokens)
    writer.append("plain", loglik, ntokens, np.zeros(3, bool), {})
    rows = sorted(journal_directory(path).glob("*.row"))
    assert len(rows) == 2  # committed, not compacted yet: read back from the journal
    store = open_store(path)
    np.testing.assert_array_equal(store.token_logprobs[0], tokens)
    assert store.token_logprobs[1] is None
    np.testing.assert_array_equal(store.text_token_logprobs(0, 0), tokens[:3])
    assert store.text_token_logprobs(0, 2).size == 0
    # One flipped bit in a stored token value fails the row's checksum, naming the row.
    data = bytearray(rows[0].read_bytes())
    data[-2] ^= 0x01
    rows[0].write_bytes(bytes(data))
    with pytest.raises(jaxmap.StoreError, match=r"journal row 1 \(m\) fails its checksum"):
        open_store(path)
    assert [problem[1] for problem in jaxmap.verify_rows(path)] == ["m"]
