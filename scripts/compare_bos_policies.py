"""Per-text log-likelihood difference between the `full` and `paper` BOS policies on the first
10 demo texts, for the packaged Qwen2.5-Coder and SmolLM2 models (the figures in docs/method.md).

Run from an empty working directory: ``python scripts/compare_bos_policies.py``.
"""

import jaxmap
from jaxmap.demo_texts import build_demo_texts

MODELS = ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"]

build_demo_texts(10, seed=0, out="texts.jsonl")
for policy in ("full", "paper"):
    jaxmap.score(MODELS, "texts.jsonl", out=f"{policy}.h5", bos_policy=policy, progress=False)
full, paper = jaxmap.open_store("full.h5"), jaxmap.open_store("paper.h5")
for row, model in enumerate(full.models):
    difference = full.loglik[row] - paper.loglik[row]
    print(
        f"{model}: full - paper per text: mean {difference.mean():.2f}, min {difference.min():.2f}, "
        f"max {difference.max():.2f} nats; scored tokens full {full.ntokens[row].sum()}, "
        f"paper {paper.ntokens[row].sum()}"
    )
