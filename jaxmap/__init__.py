"""jaxmap: map language models by their log-likelihood vectors on a fixed text set.

Python API::

    import jaxmap
    store = jaxmap.score(["org/model-a", "path/to/model-b"], "texts.jsonl", out="map.h5")
    store = jaxmap.open_store("map.h5")   # .loglik (K×N), .models, .text_ids, .ntokens
    L, tau = jaxmap.clip(store.loglik)
    kl = jaxmap.kl_matrix(L)               # K×K, nats per text
"""

from ._version import __version__
from .analysis import (
    clip,
    double_center,
    kl_matrix,
    place_models,
    resample,
    resampled_coordinates,
)
from .engine import load_model
from .jobs import score
from .store import Store, StoreError, open_store
from .texts import TextSet, chunk_document, load_texts

__all__ = [
    "Store",
    "StoreError",
    "TextSet",
    "__version__",
    "chunk_document",
    "clip",
    "double_center",
    "kl_matrix",
    "place_models",
    "resample",
    "resampled_coordinates",
    "load_model",
    "load_texts",
    "open_store",
    "score",
]
