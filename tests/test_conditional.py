"""Conditional scoring, log p(continuation | context), against transformers and against
lm-evaluation-harness's rule for splitting a context from its continuation, re-implemented here
from its description (its package is not a test dependency): trailing whitespace of the context
moves to the continuation, the whole string is encoded once and split at the context's own
token count, and an empty context is the start token alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import jaxmap
from jaxmap.errors import CheckpointError, JaxmapError, StoreMismatchError, TextSetError
from jaxmap.texts import TextSet, load_texts
from jaxmap.tokenization import load_tokenizer, tokenize

from conftest import PARITY_TOLERANCE, save_random_model, score_matching_transformers, tiny_llama_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_CTX = 64
LONG_CONTEXT = "A context far longer than the window, sentence after sentence. " * 8
PAIRS = [
    ("The quick brown fo", "x jumps over the lazy dog."),  # the boundary cuts a word
    ("Question: what barks? Answer: ", "A dog."),  # a trailing space moves over
    ("First line.\n", "Second line."),  # so does a trailing newline
    ("", "A text with no context at all."),  # the start token alone
    ("   ", "After a context of spaces only."),
    (LONG_CONTEXT, " and then the end."),  # longer than the window: cut from the front
    ("Language models", ""),  # nothing to score
]


def _models(root: Path) -> dict[str, Path]:
    """A Llama whose tokenizer has a BOS, and a GPT-2 whose tokenizer has none (its start token
    is the EOS)."""
    gpt2 = transformers.GPT2Config(
        n_embd=48, n_layer=2, n_head=4, n_positions=N_CTX, vocab_size=300, bos_token_id=None
    )
    return {
        "llama": save_random_model(root / "llama", tiny_llama_config(max_position_embeddings=N_CTX), seed=3),
        "gpt2": save_random_model(root / "gpt2", gpt2, seed=4, adds_bos=False),
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return _models(tmp_path_factory.mktemp("conditional"))


def lm_eval_split(tokenizer, context: str, continuation: str, policy: str) -> tuple[list[int], list[int]]:
    """The context's and the continuation's ids, by lm-evaluation-harness's rule, with the
    start token (``full``) or the tokenizer's defaults (``paper``) as jaxmap's policies add."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    def encode(string: str) -> list[int]:
        if policy == "paper":
            return tokenizer.encode(string)
        return [start] + tokenizer.encode(string, add_special_tokens=False)

    if context == "":
        whole = encode(continuation)
        return whole[:1], whole[1:]
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(context + continuation)
    prefix = encode(context)
    return prefix, whole[len(prefix):]


def transformers_scores(directory: Path, pairs, policy: str, n_ctx: int = N_CTX):
    """Per pair: the continuation's log-likelihood from transformers, its scored-token count and
    whether each of its tokens is the argmax, the sequence cut to its last ``n_ctx`` tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    logliks, counts, greedy = [], [], []
    for context, continuation in pairs:
        prefix, scored = lm_eval_split(tokenizer, context, continuation, policy)
        ids = (prefix + scored)[-n_ctx:]
        count = min(len(scored), len(ids) - 1)
        if count == 0:
            logliks.append(0.0), counts.append(0), greedy.append(True)
            continue
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
        targets = torch.tensor(ids[1:])
        picked = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
        logliks.append(float(picked[-count:].sum()))
        counts.append(count)
        greedy.append(bool((logits.argmax(-1) == targets)[-count:].all()))
    return np.array(logliks), np.array(counts), np.array(greedy)


def greedy_pair(directory: Path, policy: str, steps: int = 2) -> tuple[str, str]:
    """A context and the continuation transformers generates greedily after it, among a few
    contexts the first whose continuation re-encodes to the generated tokens (so that
    is_greedy holds for it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    for context in ("Hello world.", "The model.", "Language.", "A short line.", "Once upon a time.", "Text:", "(", "1"):
        ids, _ = lm_eval_split(tokenizer, context, "", policy)
        generated = []
        for _ in range(steps):
            with torch.no_grad():
                generated.append(int(model(torch.tensor([ids + generated])).logits[0, -1].argmax()))
        continuation = tokenizer.decode(generated)
        if lm_eval_split(tokenizer, context, continuation, policy) == (ids, generated):
            return context, continuation
    raise AssertionError("no context's greedy continuation re-encodes to its own tokens")


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("policy", ["full", "paper"])
def test_tokens_split_as_lm_evaluation_harness_splits_them(models, name, policy):
    tokenizer = load_tokenizer(models[name])
    texts = TextSet.from_pairs([c for c, _ in PAIRS], [t for _, t in PAIRS])
    tokens = tokenize(texts, tokenizer, policy)
    for position, (context, continuation) in enumerate(PAIRS):
        prefix, scored = lm_eval_split(tokenizer, context, continuation, policy)
        first = int(tokens.first_targets[position])
        assert tokens[position].tolist() == prefix + scored, (context, continuation)
        # A context of no tokens (spaces, under paper without a BOS): the first is context.
        assert first == max(len(prefix), 1), (context, continuation)
    # The split is by count, not by text: where the whole string merges across the boundary
    # ("fo" + "x"), the model reads the context's own tokens, then the whole's past their count.
    cut_context = tokenizer.encode(PAIRS[0][0], add_special_tokens=False)
    cut_whole = tokenizer.encode(PAIRS[0][0] + PAIRS[0][1], add_special_tokens=False)
    assert cut_whole[: len(cut_context)] != cut_context, "the case must merge across the boundary"
    assert tokens[0][-len(cut_whole) + len(cut_context):].tolist() == cut_whole[len(cut_context):]
    assert tokenizer.decode(tokens[1][tokens.first_targets[1]:]) == " A dog."


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("policy", ["full", "paper"])
def test_conditional_scores_and_greedy_flags_match_transformers(models, name, policy, tmp_path):
    directory = models[name]
    pairs = PAIRS + [greedy_pair(directory, policy)]
    texts = TextSet.from_pairs([c for c, _ in pairs], [t for _, t in pairs])
    expected, counts, greedy = transformers_scores(directory, pairs, policy)
    assert greedy[-1], "the generated continuation must be the greedy one"
    assert not greedy[:3].any()
    store = score_matching_transformers(
        directory, texts, tmp_path, expected, counts, f"{name}-{policy}", bos_policy=policy,
    )
    np.testing.assert_array_equal(store.is_greedy[0], greedy)
    long_text = PAIRS.index((LONG_CONTEXT, " and then the end."))
    assert store.truncated[0, long_text] and store.truncated[0].sum() == 1
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    continuations = [len(lm_eval_split(tokenizer, c, t, policy)[1]) for c, t in pairs]
    if policy == "paper" and name == "gpt2":  # a context of spaces encodes to nothing there
        continuations[PAIRS.index(PAIRS[4])] -= 1
    np.testing.assert_array_equal(store.continuation_tokens[0], continuations)


def test_rolling_windows_score_every_continuation_token_once(models, tmp_path):
    """A continuation longer than the window: each token scored once, in the first window that
    reaches it, which starts ``n_ctx - stride`` tokens before the first scored token (or at 0)."""
    directory = models["llama"]
    context, continuation = "Some context. " * 3, " then a continuation longer than the window," * 6
    stride = 24
    store = jaxmap.score(
        [str(directory)], TextSet.from_pairs([context, *PAIRS[1:3][0][:1]], [continuation, PAIRS[1][1]]),
        out=tmp_path / "rolling.h5", long_texts="rolling", stride=stride, batch_tokens=128, progress=False,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    prefix, scored = lm_eval_split(tokenizer, context, continuation, "full")
    ids, first = prefix + scored, len(prefix)
    assert len(ids) > 2 * N_CTX
    windows, begin = [], max(0, min(first - (N_CTX - stride), len(ids) - N_CTX))
    while True:
        end = min(begin + N_CTX, len(ids))
        windows.append((begin, end))
        if end == len(ids):
            break
        begin = min(begin + stride, len(ids) - N_CTX)
    expected = 0.0
    for target in range(first, len(ids)):
        begin, end = next(w for w in windows if w[1] > target)
        assert target - begin >= min(first, N_CTX - stride)
        with torch.no_grad():
            logits = model(torch.tensor([ids[begin:target]])).logits[0, -1].double()
        expected += float(torch.log_softmax(logits, -1)[ids[target]])
    assert store.ntokens[0, 0] == len(scored)
    assert abs(store.loglik[0, 0] - expected) <= PARITY_TOLERANCE
    # A continuation that fits one window is scored as when truncating.
    truncating = jaxmap.score(
        [str(directory)], TextSet.from_pairs([PAIRS[1][0]], [PAIRS[1][1]]), out=tmp_path / "t.h5",
        progress=False,
    )
    assert abs(store.loglik[0, 1] - truncating.loglik[0, 0]) <= 1e-5


def test_texts_without_contexts_score_and_hash_as_before(models, text_file, tmp_path):
    plain = load_texts(text_file)
    digest = __import__("hashlib").sha256()
    for part in (p for pair in zip(plain.ids, plain.texts) for p in pair):
        digest.update(len(part.encode()).to_bytes(8, "little") + part.encode())
    assert plain.fingerprint == digest.hexdigest() and not plain.conditional
    # The same strings as continuations of empty contexts are the same text set.
    assert TextSet.from_pairs([""] * len(plain), list(plain.texts), list(plain.ids)) == TextSet(
        plain.ids, plain.texts
    )
    tokenizer = load_tokenizer(models["llama"])
    assert tokenize(plain, tokenizer).first_targets is None
    store = jaxmap.score([str(models["llama"])], plain, out=tmp_path / "plain.h5", progress=False)
    with __import__("h5py").File(tmp_path / "plain.h5") as handle:
        assert "contexts" not in handle and "questions" not in handle
        assert json.loads(handle.attrs["settings"]) == {"bos_policy": "full", "dtype": "float32", "long_texts": "truncate"}
    assert not store.is_greedy.any()


def test_the_store_keeps_contexts_questions_and_greedy_flags(models, tmp_path):
    path = tmp_path / "questions.jsonl"
    lines = [
        {"id": "q1a", "question_id": "q1", "context": "Two plus two is", "continuation": " four", "gold": True, "note": "x"},
        {"id": "q1b", "question_id": "q1", "context": "Two plus two is", "continuation": " five", "gold": False},
        {"id": "plain", "text": "A plain text between them."},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    store = jaxmap.score([str(models["gpt2"])], path, out=tmp_path / "q.h5", progress=False)
    assert store.contexts == ["Two plus two is", "Two plus two is", ""]
    assert store.questions == [{"question_id": "q1", "gold": True}, {"question_id": "q1", "gold": False}, {}]
    assert store.text_bytes.tolist() == [5, 5, len("A plain text between them.")]
    again = store.text_set
    assert again == load_texts(path) and again.metadata[0] == {"question_id": "q1", "gold": True}
    # Appending to it (the job opens the store and checks the text set) accepts the same file.
    jaxmap.score([str(models["llama"])], path, out=tmp_path / "q.h5", progress=False)
    assert len(jaxmap.open_store(tmp_path / "q.h5").models) == 2


def test_pmi_is_the_conditional_less_the_continuation_alone(models, tmp_path):
    directory = str(models["llama"])
    pairs = PAIRS[:3]
    texts = TextSet.from_pairs([c for c, _ in pairs], [t for _, t in pairs])
    conditional = jaxmap.score([directory], texts, out=tmp_path / "c.h5", progress=False)
    alone = jaxmap.score(
        [directory], TextSet.from_texts([t for _, t in pairs]), out=tmp_path / "a.h5", progress=False
    )
    pmi = jaxmap.score([directory], texts, out=tmp_path / "p.h5", pmi=True, progress=False)
    np.testing.assert_allclose(pmi.loglik[0], conditional.loglik[0] - alone.loglik[0], atol=1e-9)
    np.testing.assert_array_equal(pmi.ntokens[0], conditional.ntokens[0])
    assert pmi.settings["values"] == "pmi" and pmi.model_meta[0]["values"] == "pmi"
    # PMI rows and log-likelihood rows never share a store, either way round.
    with pytest.raises(StoreMismatchError, match="values='pmi' in the store, 'loglik' asked"):
        jaxmap.score([str(models["gpt2"])], texts, out=tmp_path / "p.h5", progress=False)
    with pytest.raises(StoreMismatchError, match="values"):
        jaxmap.score([str(models["gpt2"])], texts, out=tmp_path / "c.h5", pmi=True, progress=False)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pmi": True}, "--pmi needs texts with a context"),
        ({"chat_template": True}, "--chat-template needs texts with a context"),
        ({"pmi": True, "logit_lens": True}, r"pmi \(--pmi\) cannot be combined with logit_lens"),
        ({"pmi": True, "save_token_logprobs": True}, "cannot be combined with keep_token_logprobs"),
    ],
)
def test_refusals_are_one_line_before_any_model_work(models, tmp_path, options, message):
    with pytest.raises(JaxmapError, match=message):
        jaxmap.score([str(models["llama"])], ["a plain text"], out=tmp_path / "x.h5", progress=False, **options)
    assert not (tmp_path / "x.h5").exists()


def test_pallas_log_probs_are_refused_for_contexts_in_one_line(models, tmp_path):
    texts = TextSet.from_pairs(["Hello"], [" world"])
    summary = jaxmap.score_job(
        [str(models["llama"])], texts, tmp_path / "x.h5", logprob="pallas", progress=False
    )
    (reason,) = summary.failures.values()
    assert "pallas log-prob kernel does not compute is_greedy" in reason and "\n" not in reason


def test_logit_lens_rows_sum_the_continuation_only(models, tmp_path):
    texts = TextSet.from_pairs([c for c, _ in PAIRS[:3]], [t for _, t in PAIRS[:3]])
    store = jaxmap.score([str(models["llama"])], texts, out=tmp_path / "lens.h5", logit_lens=True, progress=False)
    plain = jaxmap.score([str(models["llama"])], texts, out=tmp_path / "own.h5", progress=False)
    own = store.find_row(str(models["llama"]))
    last = store.models.index(f"{store.models[own]}@layer2")
    np.testing.assert_allclose(store.loglik[last], plain.loglik[0], atol=1e-5)
    np.testing.assert_array_equal(store.ntokens[own], plain.ntokens[0])
    np.testing.assert_array_equal(store.is_greedy[own], plain.is_greedy[0])


@pytest.mark.parametrize(
    "line, message",
    [
        ({"text": "a", "context": "b"}, "both 'text' and 'context'"),
        ({"context": "b"}, "'continuation' is missing"),
        ({"response": "b"}, "'prompt' is missing"),
        ({"context": "a", "continuation": 3}, "'continuation' must be a string"),
        ({"context": "a", "continuation": "b", "prompt": "c", "response": "d"}, "use one pair"),
        ({"context": "a\u0000", "continuation": "b"}, "context '1' contains a NUL"),
    ],
)
def test_malformed_conditional_lines_are_one_line_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(TextSetError, match=message) as caught:
        load_texts(path)
    assert f"{path}:2" in str(caught.value) and "\n" not in str(caught.value)


def test_prompt_and_response_fields_read_as_context_and_continuation(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "response": "Hello", "topic": "greeting"}) + "\n")
    texts = load_texts(path)
    assert texts.contexts == ("Hi",) and texts.texts == ("Hello",) and texts.metadata == ({"topic": "greeting"},)
    texts.to_jsonl(tmp_path / "again.jsonl")
    assert load_texts(tmp_path / "again.jsonl") == texts


# ---------------------------------------------------------------------------------------------
# Chat templates

TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
CHATS = [("What is two plus two?", "Four."), ("Name a colour.", "Blue, or perhaps green.")]


def _chat_ids(tokenizer, context: str, reply: str | None):
    """transformers' own token ids of the conversation (the prompt alone when ``reply`` is None)."""
    messages = [{"role": "user", "content": context}]
    if reply is not None:
        messages.append({"role": "assistant", "content": reply})
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=reply is None)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    directory = save_random_model(tmp_path_factory.mktemp("chat") / "m", tiny_llama_config(), seed=5)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


def test_chat_template_scores_the_assistant_turn_as_transformers_tokenizes_it(chat_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    model = AutoModelForCausalLM.from_pretrained(chat_model, dtype=torch.float32).eval()
    texts = TextSet.from_pairs([c for c, _ in CHATS], [r for _, r in CHATS])
    tokens = tokenize(texts, load_tokenizer(chat_model), "full", chat_template=True)
    expected = []
    for position, (context, reply) in enumerate(CHATS):
        whole, prompt = _chat_ids(tokenizer, context, reply), _chat_ids(tokenizer, context, None)
        assert tokens[position].tolist() == whole and tokens.first_targets[position] == len(prompt)
        assert whole[: len(prompt)] == prompt
        with torch.no_grad():
            logits = model(torch.tensor([whole])).logits[0, :-1].double()
        picked = torch.log_softmax(logits, -1).gather(1, torch.tensor(whole[1:])[:, None])[:, 0]
        expected.append(float(picked[len(prompt) - 1:].sum()))
    store = jaxmap.score([str(chat_model)], texts, out=tmp_path / "chat.h5", chat_template=True, progress=False)
    assert np.abs(store.loglik[0] - expected).max() <= PARITY_TOLERANCE
    assert store.settings["chat_template"] == "tokenizer"
    # The reply's own tokens and the end-of-turn marker are scored, nothing of the prompt.
    decoded = tokenizer.decode(tokens[0][tokens.first_targets[0]:])
    assert decoded.startswith("Four.") and "</s>" in decoded and "user" not in decoded


def test_a_model_without_a_chat_template_is_refused_by_name(models, tmp_path):
    texts = TextSet.from_pairs(["Hi"], ["Hello"])
    summary = jaxmap.score_job([str(models["llama"])], texts, tmp_path / "x.h5", chat_template=True, progress=False)
    (reason,) = summary.failures.values()
    assert "has no chat template" in reason and "--chat-template" in reason


def test_packaged_instruct_model_chat_tokens_match_apply_chat_template():
    from jaxmap.checkpoints import resolve
    from jaxmap.checkpoints.packaged import installed_packaged_models

    if "smollm2-135m-instruct" not in installed_packaged_models():
        pytest.skip("the packaged SmolLM2 instruct model is not installed")
    tokenizer = load_tokenizer(resolve("smollm2-135m-instruct").directory)
    texts = TextSet.from_pairs([c for c, _ in CHATS], [r for _, r in CHATS])
    tokens = tokenize(texts, tokenizer, "full", chat_template=True)
    for position, (context, reply) in enumerate(CHATS):
        assert tokens[position].tolist() == _chat_ids(tokenizer, context, reply)
        assert tokens.first_targets[position] == len(_chat_ids(tokenizer, context, None))


def test_a_reply_that_merges_with_the_prompt_splits_at_the_prompt_s_token_count():
    from jaxmap.checkpoints import resolve
    from jaxmap.checkpoints.packaged import installed_packaged_models

    if "smollm2-135m-instruct" not in installed_packaged_models():
        pytest.skip("the packaged SmolLM2 instruct model is not installed")
    tokenizer = load_tokenizer(resolve("smollm2-135m-instruct").directory)
    context, reply = "Which sentence follows?", " 90% of them do."  # lm-eval's leading space
    whole, prompt = _chat_ids(tokenizer, context, reply), _chat_ids(tokenizer, context, None)
    assert whole[: len(prompt)] != prompt, "the template's newline must merge with the space"
    tokens = tokenize(TextSet.from_pairs([context], [reply]), tokenizer, "full", chat_template=True)
    assert tokens[0].tolist() == prompt + whole[len(prompt):]
    assert tokens.first_targets[0] == len(prompt)


def test_a_template_whose_prompt_changes_under_the_reply_is_refused(chat_model):
    tokenizer = load_tokenizer(chat_model)
    tokenizer.chat_template = TEMPLATE.replace("<s>assistant\n{% endif %}", "<s>Assistant:{% endif %}")
    with pytest.raises(CheckpointError, match="renders the prompt differently once the assistant turn follows"):
        tokenize(TextSet.from_pairs(["Hi"], ["Hello"]), tokenizer, "full", chat_template=True)


def test_a_pmi_map_resamples_and_adds_a_model_with_its_contexts_and_settings(tiny_models, tmp_path):
    """``resample`` keeps the subset's contexts and ``add`` scores the new model under the
    map's settings: a copy of a map model lands on it."""
    import shutil

    from jaxmap.cli import main

    pairs = [(f"Item {i}: the answer is", f" number {i * 7 % 11}.") for i in range(12)]
    texts = TextSet.from_pairs([c for c, _ in pairs], [t for _, t in pairs])
    store = tmp_path / "map.h5"
    jaxmap.score([str(m) for m in tiny_models[:3]], texts, out=store, pmi=True, progress=False)
    subset = tmp_path / "subset.jsonl"
    assert main(["resample", str(store), "--n", "6", "--seed", "1", "--out", str(subset)]) == 0
    assert all(load_texts(subset).contexts)
    twin = tmp_path / "twin-of-1"
    shutil.copytree(tiny_models[1], twin)
    placement = jaxmap.add_models(store, subset, [str(twin)], progress=False)
    added = jaxmap.open_store(placement.scores)
    assert added.settings["values"] == "pmi" and all(added.contexts)
    nearest = placement.nearest(1)[0][0]
    assert nearest[0] == str(tiny_models[1]) and nearest[1] <= 1e-12 * placement.kl[0].max()


def test_the_pallas_attention_kernel_scores_contexts_as_the_default_path(models, tmp_path):
    texts = TextSet.from_pairs([c for c, _ in PAIRS[:3]], [t for _, t in PAIRS[:3]])
    default = jaxmap.score([str(models["llama"])], texts, out=tmp_path / "a.h5", progress=False)
    pallas = jaxmap.score(
        [str(models["llama"])], texts, out=tmp_path / "p.h5", attention="pallas", mesh="data=1,model=1",
        progress=False,
    )
    assert np.abs(pallas.loglik[0] - default.loglik[0]).max() <= 1e-4
    np.testing.assert_array_equal(pallas.is_greedy[0], default.is_greedy[0])


def test_agrees_with_lm_evaluation_harness_loglikelihood(models, tmp_path):
    """lm-evaluation-harness's own HF backend on the same model: the same sums and greedy flags
    for contexts that cut a word, end in a space or a newline, are empty, or hold only spaces.
    (Its window keeps one token more than jaxmap's, so contexts longer than it are not compared.)"""
    huggingface = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    directory = models["llama"]
    pairs = PAIRS[:5] + [greedy_pair(directory, "full")]
    harness = huggingface.HFLM(
        pretrained=str(directory), device="cpu", batch_size=1, add_bos_token=True, max_length=N_CTX
    )
    answers = harness.loglikelihood(
        [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)], disable_tqdm=True
    )
    texts = TextSet.from_pairs([c for c, _ in pairs], [t for _, t in pairs])
    store = jaxmap.score([str(directory)], texts, out=tmp_path / "harness.h5", progress=False)
    expected = np.array([value for value, _ in answers])
    assert np.abs(store.loglik[0] - expected).max() <= PARITY_TOLERANCE
    assert store.is_greedy[0].tolist() == [bool(greedy) for _, greedy in answers]
    assert answers[-1][1], "the generated continuation is greedy under the harness too"


def test_the_plan_counts_the_contexts_the_model_reads():
    from jaxmap.planning import estimated_lengths

    plain = TextSet.from_texts(["x" * 40])
    conditional = TextSet.from_pairs(["c" * 400], ["x" * 40])
    assert estimated_lengths(conditional)[0] > 10 * estimated_lengths(plain)[0]
