"""Length-bucketed batches under a token budget.

Texts are sorted by length and padded up to a bucket length from a fixed ladder (four steps
per octave). A batch of bucket length L has ``batch_tokens // L`` rows; texts are added in
length order, and a batch moves up one bucket length while its texts still fit the budget
there, so a bucket's leftovers join the next bucket's texts. A batch left partly full is cut to
the next power of two rows. That gives at most two shapes per bucket length; shapes depend only
on the token lengths, so models sharing a tokenizer and architecture reuse every compilation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import JaxmapError

MIN_BUCKET = 16
# How far (as a length ratio) a batch may grow past its first bucket: one step of the ladder.
GROWTH = 1.25


def bucket_length(length: int) -> int:
    """The padded length for a sequence of ``length`` positions."""
    if length <= 4 * MIN_BUCKET:
        return max(MIN_BUCKET, -(-length // MIN_BUCKET) * MIN_BUCKET)
    step = 2 ** (int(math.log2(length)) - 2)
    return -(-length // step) * step


@dataclass(frozen=True)
class Batch:
    """Positions of the texts in one batch, and its padded shape (rows × length)."""

    indices: np.ndarray
    rows: int
    length: int


@dataclass(frozen=True)
class BatchPlan:
    """All batches for one model, with the padding they cost."""

    batches: list[Batch]
    real_positions: int

    @property
    def padded_positions(self) -> int:
        return sum(b.rows * b.length for b in self.batches)

    @property
    def padding_fraction(self) -> float:
        """Share of computed positions that are padding."""
        total = self.padded_positions
        return 1.0 - self.real_positions / total if total else 0.0

    @property
    def shapes(self) -> set[tuple[int, int]]:
        return {(b.rows, b.length) for b in self.batches}


def plan_batches(lengths: np.ndarray, batch_tokens: int, max_length: int | None = None) -> BatchPlan:
    """Group texts with ``lengths`` scored positions (>0) into bucketed batches.

    Buckets never exceed ``max_length`` (the model's context less the start token), since
    learned position tables end there. Texts with no scored position are left out; the caller
    records them as zero.
    """

    def bucket(length: int) -> int:
        padded = bucket_length(length)
        return min(padded, max_length) if max_length else padded

    if batch_tokens < MIN_BUCKET:
        raise JaxmapError(f"batch_tokens must be at least {MIN_BUCKET}, got {batch_tokens}")
    lengths = np.asarray(lengths)
    order = [int(i) for i in np.argsort(lengths, kind="stable") if lengths[i] > 0]

    def rows_for(length: int) -> int:
        return max(1, batch_tokens // length)

    batches: list[Batch] = []
    members: list[int] = []
    first = length = 0

    def close() -> None:
        rows = min(rows_for(length), 1 << (len(members) - 1).bit_length())
        batches.append(Batch(np.asarray(members, np.int64), rows, length))

    for index in order:
        wanted = bucket(int(lengths[index]))
        # A batch grows into the next bucket length while its texts fit the token budget there,
        # so a bucket's leftovers ride along with slightly longer texts instead of filling a
        # half-empty batch; it never spans more than one step of the ladder.
        if members and (len(members) + 1 > rows_for(wanted) or wanted > GROWTH * first):
            close()
            members = []
        if not members:
            first = wanted
        members.append(index)
        length = wanted
    if members:
        close()
    return BatchPlan(batches, int(lengths[lengths > 0].sum()))
