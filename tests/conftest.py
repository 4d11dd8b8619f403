"""Shared fixtures: tiny tokenizers, random Hugging Face models saved with save_pretrained, and
the transformers (PyTorch, CPU, float32) reference log-likelihoods they are checked against."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Most of the suite's time is XLA compiling programs for tiny models, and most of a CPU
# compilation is LLVM optimising machine code that then runs for milliseconds: the suite
# compiles at -O0 (about a quarter less time in total). It changes how the programs' code is
# generated, not the programs: every comparison still runs jaxmap's own computation (the
# subprocesses the tests start inherit the flag, so cached and fresh programs agree). Set
# XLA_FLAGS=--xla_backend_optimization_level=N to test at another level.
if os.environ["JAX_PLATFORMS"] == "cpu" and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import numpy as np
import pytest

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Language models assign probabilities to text; maps of models compare them.",
    "Ünïcödé façade, naïve café, 東京 and Zürich — plus emoji 🙂 and maths ∑ x².",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "In the beginning was the Word, and the Word was with God.",
    "Call me Ishmael. Some years ago, never mind how long precisely.",
]

TEXTS = [
    "Hello world.",
    "",
    "A",
    "Ünïcödé façade — 東京 🙂 naïve café.",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "def add(a, b):\n    return a + b\n" * 4,
    "Call me Ishmael. Some years ago, never mind how long precisely, having little money.",
    "short",
    "Language models assign probabilities to text. " * 12,
]


def build_tokenizer(directory: Path, adds_bos: bool, vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on CORPUS, saved as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    if adds_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
        )
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>")
    fast.save_pretrained(directory)
    return fast


def randomize(model, seed: int, norm_center: float = 1.0) -> None:
    """Give every weight a distinctive random value so parity checks are sensitive.

    HF's default init makes near-uniform predictions, which would hide most port errors.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            noise = torch.randn(tensor.shape, generator=generator)
            norm_names = ("ln_1.weight", "ln_2.weight", "ln_f.weight", "ln_attn.weight", "ln_mlp.weight")
            if "norm" in name or name.endswith(norm_names):
                center = norm_center if name.endswith("weight") else 0.0
                tensor.copy_(center + 0.2 * noise)
            elif name.endswith("bias"):
                tensor.copy_(0.2 * noise)
            else:
                tensor.copy_(noise * (1.5 / tensor.shape[-1] ** 0.5))


def save_random_model(
    directory: Path, config, seed: int = 0, adds_bos: bool = True, norm_center: float = 1.0
) -> Path:
    """Build a random transformers model from ``config``, save it with a tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory, adds_bos)
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    if adds_bos:
        config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed, norm_center)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def reference_loglik(
    directory: Path, texts: list[str], policy: str, n_ctx: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-text log-likelihood and scored-token count from transformers, one text at a time,
    each cut to ``n_ctx`` tokens (default: the context the config names)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    # MPT names its context max_seq_len; Bloom names none (ALiBi): no truncation then.
    n_ctx = n_ctx or next(
        (
            getattr(model.config, name)
            for name in ("max_position_embeddings", "n_positions", "max_seq_len")
            if getattr(model.config, name, None)
        ),
        None,
    )
    logliks, counts = [], []
    for text in texts:
        if policy == "paper":
            ids = tokenizer.encode(text)
        else:
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            ids = [start] + tokenizer.encode(text, add_special_tokens=False)
        ids = ids[:n_ctx]
        if len(ids) < 2:
            logliks.append(0.0)
            counts.append(0)
            continue
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        logprobs = torch.log_softmax(logits[:-1], dim=-1)
        picked = logprobs.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        logliks.append(float(picked.sum()))
        counts.append(len(ids) - 1)
    return np.array(logliks), np.array(counts)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    import json

    path = tmp_path_factory.mktemp("texts") / "texts.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i, text in enumerate(TEXTS):
            handle.write(json.dumps({"id": f"t{i}", "text": text, "source": "test"}) + "\n")
    return path


def tiny_llama_config(**overrides):
    import transformers

    settings = dict(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300, max_position_embeddings=256,
    )
    return transformers.LlamaConfig(**{**settings, **overrides})


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> list[Path]:
    """Four random Llama models of one shape (different seeds), saved with save_pretrained."""
    root = tmp_path_factory.mktemp("models")
    return [save_random_model(root / f"tiny-{seed}", tiny_llama_config(), seed=seed) for seed in range(4)]


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 8 MB tmpfs, for full-disk tests (mounting needs root; skipped with the reason
    otherwise)."""
    import subprocess

    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a real full filesystem needs root to mount a small tmpfs")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_filesystem(directory: Path, leave_bytes: int) -> None:
    """Fill ``directory``'s file system up to ``leave_bytes`` free."""
    stats = os.statvfs(directory)
    with open(directory / "filler", "wb") as handle:
        handle.write(b"\0" * max(stats.f_bavail * stats.f_frsize - leave_bytes, 0))


@pytest.fixture
def long_text_file(tmp_path) -> Path:
    """Enough texts that a scoring run lasts seconds, so a signal can land in the middle of it."""
    import json

    path = tmp_path / "long.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(30 * len(TEXTS)):
            handle.write(json.dumps({"id": f"t{i}", "text": f"{i}: {TEXTS[i % len(TEXTS)]}"}) + "\n")
    return path


PARITY_TOLERANCE = 1e-3  # nats per text, against transformers in float32


def score_matching_transformers(
    directory: Path, text_file: Path, out_dir: Path, expected: np.ndarray,
    expected_counts: np.ndarray, label: str, tolerance: float = PARITY_TOLERANCE, **options,
):
    """Score ``directory`` with jaxmap twice, texts packed into rows and texts bucketed by
    length; each must score the tokens transformers scored and match its log-likelihoods within
    ``tolerance``. Returns the packed run's store. ``options`` go to :func:`jaxmap.score`
    (default ``batch_tokens=128``, so that several batches and shapes are exercised)."""
    import jaxmap

    options = {"batch_tokens": 128, "progress": False, **options}
    stores = {}
    for packing in ("pack", "buckets"):
        store = jaxmap.score(
            [str(directory)], text_file, out=out_dir / f"{label}-{packing}.h5", packing=packing,
            **options,
        )
        batching = store.model_meta[0]["batching"]
        unpackable = "cannot pack" in batching and packing == "pack"
        assert unpackable or batching.startswith("packed" if packing == "pack" else "buckets"), batching
        np.testing.assert_array_equal(store.ntokens[0], expected_counts, err_msg=packing)
        delta = np.abs(store.loglik[0] - expected).max()
        print(f"{label} [{batching}]: max |delta| = {delta:.2e} nats")
        assert delta <= tolerance, (packing, store.loglik[0], expected)
        stores[packing] = store
    return stores["pack"]


def pytest_collection_finish(session):
    """Start tests/test_sharding.py's subprocess (a minute of one core's work) as the session
    starts, when its tests are selected: it runs beside the tests before them, not before its
    own (the file's fixture waits for it, and starts it itself when it was not started)."""
    import tempfile

    if session.config.option.collectonly:
        return
    sharded = [item for item in session.items if "sharded_run" in getattr(item, "fixturenames", ())]
    if sharded:
        root = Path(tempfile.mkdtemp(prefix="jaxmap-sharded-"))
        session.config.stash[_SHARDED_ROOT] = root
        sharded[0].module.start_early(session.config, root)


def pytest_sessionfinish(session):
    import shutil

    root = session.config.stash.get(_SHARDED_ROOT, None)
    if root is not None:
        for item in getattr(session, "items", ()):
            if "sharded_run" in getattr(item, "fixturenames", ()):
                item.module.stop_early(session.config)
                break
        shutil.rmtree(root, ignore_errors=True)


_SHARDED_ROOT = pytest.StashKey[Path]()
