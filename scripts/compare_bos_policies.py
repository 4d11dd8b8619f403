"""Per-text log-likelihood difference between the full and paper BOS policies on the first 10
demo texts, for the packaged Qwen2.5-Coder and SmolLM2 models (the figures in docs/method.md).
Run from an empty directory: python scripts/compare_bos_policies.py"""
import numpy as np, jaxmap
from jaxmap.demo_texts import build_demo_texts
texts = build_demo_texts(10, seed=0, out="texts.jsonl")
for policy in ("full", "paper"):
    jaxmap.score(["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"], "texts.jsonl", out=f"{policy}.h5", bos_policy=policy, progress=False)
f, p = jaxmap.open_store("full.h5"), jaxmap.open_store("paper.h5")
for i, m in enumerate(f.models):
    d = f.loglik[i] - p.loglik[i]
    print(m, "full-paper per text: mean %.2f min %.2f max %.2f nats; tokens full %d paper %d" % (d.mean(), d.min(), d.max(), f.ntokens[i].sum(), p.ntokens[i].sum()))
