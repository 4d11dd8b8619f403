"""What a store records about each of its rows, typed.

Every row of a store carries a JSON object (``/model_meta``): its canonical key, the reference
it was scored from, revision, architecture, settings, timings, and for a logit-lens row the
layer it reads and the model it belongs to. :class:`RowMetadata` types the fields that say which
model a row is and where it stands; the rest (revision, timings, ...) is read as recorded, from
:attr:`jaxmap.store.Store.model_meta`.

A model scored with ``--logit-lens`` gives a thread of rows, one per layer, ordered by layer:
:func:`logit_lens_threads`. Rows join a thread by their model's canonical key
(:attr:`RowMetadata.parent`), not by the model as it was spelled: the key is what makes one
model one row of a store however it is spelled, so ``./m`` and ``m/`` are one thread, and two
different models that were both spelled ``./m`` (in different directories) are two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class RowMetadata:
    """One row's metadata: ``name`` as the store lists it, ``key`` the canonical key (one model
    is one row however it is spelled), ``reference`` the model as given to ``jaxmap score``
    (what loads it again); for a logit-lens row the ``layer`` it reads (0: the embeddings), its
    model's canonical key (``parent``, the thread the row belongs to) and that model as given
    (``parent_model``, for display)."""

    name: str
    key: str
    reference: str
    layer: int | None = None
    parent: str | None = None
    parent_model: str | None = None

    @classmethod
    def parse(cls, name: str, recorded: Mapping[str, Any]) -> "RowMetadata":
        """The metadata of the row ``name`` from its stored JSON object. Rows committed through
        the API may lack any field: the key and reference are then the row's name."""
        return cls(
            name=name,
            key=recorded.get("key") or name,
            reference=recorded.get("reference") or name,
            layer=recorded.get("layer"),
            parent=recorded.get("parent_key"),
            parent_model=recorded.get("parent_model"),
        )

    @property
    def is_layer_row(self) -> bool:
        """Whether the row is one layer of a model read through the logit lens (it has no
        weights of its own, and is not a model to sample from or a candidate parent)."""
        return self.layer is not None

    @property
    def step(self) -> int | None:
        """Where the row stands along its thread, the Δ of the diffusion exponents: the layers
        read, for a logit-lens row; None for a model's own row."""
        return self.layer


def logit_lens_threads(rows: Sequence[RowMetadata]) -> dict[str, list[int]]:
    """Each model's logit-lens rows (indices into ``rows``) in layer order, by
    :attr:`RowMetadata.parent`, in the order the models first appear."""
    threads: dict[str, list[tuple[int, int]]] = {}
    for index, row in enumerate(rows):
        if row.is_layer_row and row.parent is not None:
            threads.setdefault(row.parent, []).append((row.step, index))
    return {parent: [index for _, index in sorted(layers)] for parent, layers in threads.items()}
