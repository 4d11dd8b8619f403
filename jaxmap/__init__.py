"""jaxmap: map language models by their log-likelihood vectors on a fixed text set.

Python API::

    import jaxmap
    store = jaxmap.score(["org/model-a", "path/to/model-b"], "texts.jsonl", out="map.h5")
    store = jaxmap.open_store("map.h5")   # .loglik (K×N), .models, .text_ids, .ntokens
    L, tau = jaxmap.clip(store.loglik)
    kl = jaxmap.kl_matrix(L)               # K×K, nats per text

The names below are imported on first use, so that ``import jaxmap`` (and the ``jaxmap``
command's start-up, during which an interrupt must exit cleanly) does not load JAX until it
is needed.
"""

from __future__ import annotations

import importlib

from ._version import __version__

_EXPORTS = {
    "clip": "analysis",
    "double_center": "analysis",
    "kl_matrix": "analysis",
    "place_models": "analysis",
    "ica": "analysis.ica",
    "bootstrap_map": "analysis.uncertainty",
    "true_kl": "analysis.true_kl",
    "TrueKL": "analysis.true_kl",
    "sample": "models.generation",
    "trajectory": "analysis.trajectory",
    "diffusion_exponents": "analysis.trajectory",
    "lineage": "analysis.trajectory",
    "add_models": "placement",
    "Placement": "placement",
    "resample": "analysis",
    "resampled_coordinates": "analysis",
    "load_model": "engine",
    "load_module": "module",
    "train": "training",
    "score": "jobs",
    "score_job": "jobs",
    "ScoringOptions": "scoring_options",
    "JobSummary": "jobs",
    "Store": "store",
    "open_store": "store",
    "drop": "store",
    "merge": "store",
    "compact": "store",
    "verify_rows": "store",
    "accuracy": "analysis.accuracy",
    "store_accuracy": "analysis.accuracy",
    "question_groups": "analysis.accuracy",
    "AccuracyResult": "analysis.accuracy",
    "Question": "analysis.accuracy",
    "QuestionError": "analysis.accuracy",
    "build_next_sentence_questions": "demo_questions",
    "TextSet": "texts",
    "chunk_document": "texts",
    "load_texts": "texts",
    "JaxmapError": "errors",
    "StoreError": "errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxmap' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
