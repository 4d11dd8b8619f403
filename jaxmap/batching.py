"""Batches under a token budget: length buckets, or packed rows; and windows for long texts.

A text is scored as one or more *pieces* (:func:`split_texts`): the text itself, cut to the
model's context (``truncate``), or overlapping windows of the context's length that together
score every token (``rolling``). Pieces go into batches one of two ways.

**Buckets** (:func:`plan_batches`): one piece per row. Pieces are sorted by length and padded up to a bucket length from a fixed ladder (four steps
per octave). A batch of bucket length L has ``batch_tokens // L`` rows; texts are added in
length order, and a batch moves up one bucket length while its texts still fit the budget
there, so a bucket's leftovers join the next bucket's texts. A batch left partly full is cut to
the next power of two rows. That gives at most two shapes per bucket length; shapes depend only
on the token lengths, so models sharing a tokenizer and architecture reuse every compilation.

**Packing** (:func:`plan_packed`): pieces laid one after another in rows of a fixed width
(best fit, longest first), each with its own segment id and positions restarting at 0, so the
decoder attends within a piece only. Padding falls to the rows' last gaps, and a model compiles
one shape, or two when the short pieces left over go into narrower rows. The attention still
costs per piece (the blockwise path skips key blocks of earlier pieces), but rows are as wide
as the longest piece or wider; narrow rows cut that cost for the short pieces.

:func:`choose_plan` estimates the FLOPs of each candidate (buckets, packing at a few row widths)
and keeps the cheapest: packing wins on most text sets; buckets where a few long pieces would
leave wide rows half empty.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from .errors import JaxmapError

MIN_BUCKET = 16
# How far (as a length ratio) a batch may grow past its first bucket: one step of the ladder.
GROWTH = 1.25
# Packed row widths are multiples of this.
ROW_MULTIPLE = 16


def bucket_length(length: int) -> int:
    """The padded length for a sequence of ``length`` positions."""
    if length <= 4 * MIN_BUCKET:
        return max(MIN_BUCKET, -(-length // MIN_BUCKET) * MIN_BUCKET)
    step = 2 ** (int(math.log2(length)) - 2)
    return -(-length // step) * step


LONG_TEXT_POLICIES = ("truncate", "rolling")
PACKINGS = ("auto", "pack", "buckets")


@dataclass(frozen=True)
class Pieces:
    """The scoring units of a text set: piece p is tokens ``start[p]:stop[p]`` of text
    ``text[p]``, and its targets (tokens it scores) are piece offsets ``first_target[p]`` …
    end; the tokens before them are context only."""

    text: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    first_target: np.ndarray

    def __len__(self) -> int:
        return len(self.text)

    @property
    def sizes(self) -> np.ndarray:
        """Tokens per piece."""
        return self.stop - self.start

    @property
    def scored(self) -> np.ndarray:
        """Targets per piece."""
        return self.sizes - self.first_target


def default_stride(context: int) -> int:
    """Rolling windows advance by half the context: every token after the first window is
    scored with at least half the context before it, for about twice the compute."""
    return max(1, context // 2)


def split_texts(
    lengths: np.ndarray, context: int, policy: str = "truncate", stride: int | None = None,
    first_targets: np.ndarray | None = None,
) -> Pieces:
    """The pieces that score texts of ``lengths`` tokens (start token included) under a model
    of ``context`` positions.

    ``truncate``: one piece per text, its first ``context`` tokens. ``rolling``: texts longer
    than the context become windows of ``context`` tokens, ``stride`` apart (default
    :func:`default_stride`), the last one ending at the text's end; each window scores the
    tokens no earlier window scored, with the rest of the window as their context. Every token
    after the first is then scored exactly once. Texts of fewer than two tokens have no piece.

    ``first_targets`` (default 1 for every text): where each text's scored tokens begin, for
    texts with a context. Such a text, when too long, keeps its last ``context`` tokens under
    ``truncate`` (lm-evaluation-harness's rule: the context is cut from the front); under
    ``rolling`` its first window gives the first scored token as much context as every later
    window gives its tokens (``context - stride``). A text with no token to score has no piece.
    """
    if policy not in LONG_TEXT_POLICIES:
        raise JaxmapError(
            f"unknown long-text policy {policy!r}; choose one of {', '.join(LONG_TEXT_POLICIES)}"
        )
    if context < 2:
        raise JaxmapError(f"a model context of {context} positions cannot score a token")
    stride = default_stride(context) if stride is None else stride
    if not 0 < stride < context:
        raise JaxmapError(
            f"stride must be between 1 and {context - 1} (the context less one), got {stride}"
        )
    firsts = np.ones(len(lengths), np.int64) if first_targets is None else first_targets
    pieces: list[tuple[int, int, int, int]] = []
    for text, (length, first) in enumerate(zip((int(n) for n in lengths), (int(f) for f in firsts))):
        if length <= first:
            continue
        if length <= context:
            pieces.append((text, 0, length, first))
            continue
        if policy == "truncate":
            begin = 0 if first == 1 else length - context
            pieces.append((text, begin, begin + context, max(first - begin, 1)))
            continue
        begin = max(0, min(first - (context - stride), length - context))
        scored_until = first
        while True:
            end = min(begin + context, length)
            pieces.append((text, begin, end, max(scored_until - begin, 1)))
            if end == length:
                break
            scored_until = end
            begin = min(begin + stride, length - context)
    columns = np.array(pieces, np.int64).reshape(-1, 4).T
    return Pieces(*columns)


@dataclass(frozen=True)
class Batch:
    """The units (texts or pieces) in one batch, and its padded shape: ``rows`` × ``length``
    computed positions (the token batch is one wider). Packed batches also give each unit's
    row and the row offset of its first token; bucketed ones hold unit i in row i at 0."""

    indices: np.ndarray
    rows: int
    length: int
    row_of: np.ndarray | None = None
    offsets: np.ndarray | None = None

    @property
    def packed(self) -> bool:
        return self.row_of is not None


@dataclass(frozen=True)
class BatchPlan:
    """All batches for one model, with the padding they cost."""

    batches: list[Batch]
    real_positions: int
    packed: bool = False

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


def _best_fit(
    sizes: np.ndarray, length: int, narrow: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-fit decreasing into rows of ``length`` positions (``length + 1`` tokens): each
    unit's row and offset, and each row's width. With ``narrow``, a unit short enough for a
    row of ``narrow`` positions goes into the best-fitting gap of a wide row, else of a narrow
    row, else opens a narrow row; so the long units' rows are filled first."""
    row_of = np.zeros(len(sizes), np.int64)
    offsets = np.zeros(len(sizes), np.int64)
    fill: list[int] = []
    widths: list[int] = []
    # Per width, (tokens left, row) sorted: the best fit is a bisect away.
    free: dict[int, list[tuple[int, int]]] = {length: [], narrow or length: []}
    for unit in np.argsort(-sizes, kind="stable"):
        size = int(sizes[unit])
        short = narrow is not None and size <= narrow + 1
        row = None
        for width in (length, narrow) if short else (length,):
            gaps = free[width]
            slot = bisect.bisect_left(gaps, (size, -1))
            if slot < len(gaps):
                left, row = gaps.pop(slot)
                break
        if row is None:
            width = narrow if short else length
            row, left = len(fill), width + 1
            fill.append(0)
            widths.append(width)
        row_of[unit], offsets[unit] = row, fill[row]
        fill[row] += size
        if left - size >= 2:
            bisect.insort(free[widths[row]], (left - size, row))
    return row_of, offsets, np.asarray(widths, np.int64)


def plan_packed(
    sizes: np.ndarray, length: int, batch_tokens: int, narrow: int | None = None
) -> BatchPlan:
    """Pack units of ``sizes`` tokens (each at least 2 and at most ``length + 1``) into rows of
    ``length`` computed positions (``length + 1`` tokens), best fit, longest first.

    With ``narrow`` (< ``length``), the short units left over once the long units' rows are
    filled share rows of ``narrow`` positions, whose attention costs a quarter as much per row
    at half the width.

    The rows of each width are spread evenly over the fewest batches of at most
    ``batch_tokens // width`` rows (at least one), so a plan has one shape per width.
    """
    sizes = np.asarray(sizes, np.int64)
    if len(sizes) and (sizes.min() < 2 or sizes.max() > length + 1):
        raise JaxmapError(f"packed units need 2 to {length + 1} tokens")
    if narrow is not None and not 0 < narrow < length:
        raise JaxmapError(f"narrow rows need 1 to {length - 1} positions, got {narrow}")
    row_of, offsets, widths = _best_fit(sizes, length, narrow)
    batches = []
    for row_length in sorted({int(w) for w in widths}, reverse=True):
        # Rows spread evenly over the fewest batches the budget allows: one shape, and fewer
        # than one empty row per batch.
        rows_here = np.flatnonzero(widths == row_length)
        per_batch = max(1, batch_tokens // row_length)
        rows = -(-len(rows_here) // -(-len(rows_here) // per_batch))
        for first in range(0, len(rows_here), rows):
            members = rows_here[first : first + rows]
            local = np.full(len(widths), -1, np.int64)
            local[members] = np.arange(len(members))
            units = np.flatnonzero(local[row_of] >= 0)
            # Units in row order, each row's units left to right, as the engine lays them out.
            units = units[np.lexsort((offsets[units], local[row_of[units]]))]
            batches.append(Batch(units, rows, row_length, local[row_of[units]], offsets[units]))
    return BatchPlan(batches, int((sizes - 1).sum()), packed=True)


def attention_blocks(batch: Batch, sizes: np.ndarray, block: int) -> int:
    """Score blocks (``block`` × ``block``) the blockwise attention path computes for a batch:
    per query block, the key blocks from the one holding the start of the earliest piece
    any row has there, up to the diagonal."""
    blocks = -(-batch.length // block)
    if not batch.packed:
        return blocks * (blocks + 1) // 2
    first_needed = np.arange(blocks)
    for row in range(batch.rows):
        in_row = batch.row_of == row
        starts = batch.offsets[in_row]
        if not len(starts):
            continue
        ends = starts + sizes[batch.indices[in_row]]
        query_starts = np.arange(blocks) * block
        # The piece holding each query block's first position (the row's padding counts as
        # starting where the last piece ends).
        holder = np.searchsorted(ends, query_starts, side="right")
        piece_start = np.where(holder < len(starts), starts[np.minimum(holder, len(starts) - 1)],
                               ends[-1])
        first_needed = np.minimum(first_needed, np.minimum(piece_start, query_starts) // block)
    return int((np.arange(blocks) - first_needed + 1).sum())


@dataclass(frozen=True)
class PlanChoice:
    """The plan :func:`choose_plan` kept, and the estimated FLOPs of every candidate."""

    plan: BatchPlan
    name: str
    estimates: dict[str, float]


def choose_plan(
    sizes: np.ndarray,
    batch_tokens: int,
    max_length: int,
    position_flops: float,
    score_flops: float,
    block_for,
    packing: str = "auto",
) -> PlanChoice:
    """The cheapest of bucketed and packed plans for units of ``sizes`` tokens, by estimated
    FLOPs: every computed position costs ``position_flops`` (its matmuls, padding included),
    every computed attention score ``score_flops``, counted in blocks of ``block_for(length)``
    (the attention path's block: the whole row for a path that computes the full square).
    Packed candidates: rows just wide enough for the longest piece (or the ladder's length),
    twice and four times that, and the narrowest width with narrow rows of a half or a quarter
    of it for the short pieces left over (:func:`plan_packed`). ``packing``: ``"auto"`` (the cheapest), ``"pack"`` (the cheapest
    packed plan) or ``"buckets"``. ``max_length`` bounds bucket lengths (the model's context
    less one); packed rows may be wider, since positions restart in every piece.
    """
    if packing not in PACKINGS:
        raise JaxmapError(f"unknown packing {packing!r}; choose one of {', '.join(PACKINGS)}")
    sizes = np.asarray(sizes, np.int64)
    candidates: dict[str, BatchPlan] = {}
    if packing != "pack":
        candidates["buckets"] = plan_batches(sizes - 1, batch_tokens, max_length=max_length)
    if packing != "buckets" and len(sizes):
        longest = int(sizes.max()) - 1
        tightest = -(-longest // ROW_MULTIPLE) * ROW_MULTIPLE
        for widening in (1, 2, 4):
            # The ladder's length and the tightest multiple of ROW_MULTIPLE: rows just wide
            # enough for the longest piece often leave far less in their last gaps.
            for length in sorted({bucket_length(longest * widening), tightest * widening}):
                if widening == 1 or length <= batch_tokens:
                    candidates[f"packed rows of {length}"] = plan_packed(sizes, length, batch_tokens)
        for narrowing in (2, 4):
            narrow = -(-tightest // narrowing // ROW_MULTIPLE) * ROW_MULTIPLE
            if narrow < tightest and (sizes <= narrow + 1).any():
                candidates[f"packed rows of {tightest} and {narrow}"] = plan_packed(
                    sizes, tightest, batch_tokens, narrow
                )

    def flops(plan: BatchPlan) -> float:
        attention = sum(
            b.rows * attention_blocks(b, sizes, block_for(b.length)) * block_for(b.length) ** 2
            for b in plan.batches
        )
        return plan.padded_positions * position_flops + attention * score_flops

    estimates = {name: flops(plan) for name, plan in candidates.items()}
    name = min(estimates, key=estimates.get) if estimates else "buckets"
    plan = candidates.get(name) or plan_batches(sizes - 1, batch_tokens, max_length=max_length)
    return PlanChoice(plan, name, estimates)
