"""The scoring engine: one model's per-text log-likelihoods on pre-tokenized texts.

Load a model (translate its config, assemble its weights on the host in their final layout and
dtype, place each on a device mesh with one transfer), run jitted forward passes over packed or
length-bucketed batches (:mod:`jaxmap.batching`, whichever costs less) and reduce token
log-probabilities with the fused vocab-tiled kernel. Texts longer than the context are cut or
scored in rolling windows.
Batches are split over the mesh's data axis, weights and the vocabulary over its model axis
(:mod:`jaxmap.sharding`). Params are jit arguments, so models of one shape (and placement) share
compilations. Running many models into a store is :mod:`jaxmap.jobs`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from .batching import Batch, Pieces, PlanChoice, choose_plan, default_stride, split_texts
from .checkpoints import Checkpoint, resolve
from .checkpoints.translated import translated_config
from .kernels.fused_logprob import DEFAULT_TILE, sharded_token_logprobs, token_logprobs
from .kernels.pallas_logprob import pallas_token_logprobs
from .models import DTYPES, DecoderConfig, Params, hidden_states
from .models import unembedding as model_unembedding
from .models import unembedding_bias
from .models.attention import block_size
from .models.decoder import attention_path, embed, final_norm
from .scoring_options import DEFAULT_DTYPE, ScoringOptions
from .sharding import (
    DATA, batch_sharding, describe_mesh, make_mesh, place_params, put, row_sharding, to_host,
)
from .tokenization import TokenizedTexts, load_tokenizer
from .errors import JaxmapError

# Padded positions per batch. On CPU, 2048 already saturates the matmuls and keeps the last,
# partly filled batches small (measured faster than 4096 and 8192 on 64 texts, SmolLM2, 2 cores);
# accelerators need far larger batches to fill.
CPU_BATCH_TOKENS = 2048
ACCELERATOR_BATCH_TOKENS = 16384


def default_batch_tokens() -> int:
    """The token budget per batch and data shard for the default JAX backend."""
    return CPU_BATCH_TOKENS if jax.default_backend() == "cpu" else ACCELERATOR_BATCH_TOKENS


@partial(jax.jit, static_argnames=("config", "tile", "mesh", "greedy"))
def token_log_likelihoods(
    params: Params,
    tokens: jax.Array,
    config: DecoderConfig,
    tile: int = DEFAULT_TILE,
    mesh: Mesh | None = None,
    lengths: jax.Array | None = None,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    greedy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) for every position: [B, T-1] float32.

    ``tokens`` is right-padded [B, T]; entries past a row's length are meaningless. With a
    ``mesh``, the vocabulary is split over its model axis (params placed by
    :func:`jaxmap.sharding.place_params`, B a multiple of the data axis); without one, the
    params are taken as they are. ``lengths`` [B] are the rows' token counts (default T), for
    rope scalings that depend on the sequence's length: transformers runs a text's every token,
    the last one included, so that is the length it chooses by.

    Packed rows pass ``positions`` and ``segment_ids`` [B, T-1] for the input positions (see
    :func:`jaxmap.models.hidden_states`) and ``lengths`` [B, T-1] per token; a position whose
    next token starts another segment gives a meaningless value.

    ``greedy`` also returns, per position, whether the next token is the model's argmax there
    (bool [B, T-1]; the lowest index wins a tie, as ``argmax`` does).
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    hidden, _ = hidden_states(
        params, inputs, config, lengths=_row_lengths(tokens, lengths), positions=positions,
        segment_ids=segment_ids,
    )
    return _hidden_log_likelihoods(params, hidden, targets, config, tile, mesh, greedy)


def _row_lengths(tokens: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """Each row's token count: ``lengths``, or the full width of ``tokens``."""
    if lengths is None:
        return jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32)
    return lengths


def _hidden_log_likelihoods(
    params: Params, hidden: jax.Array, targets: jax.Array, config: DecoderConfig, tile: int,
    mesh: Mesh | None, greedy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """log p(targets) [B, T] from final-normed hidden states [B, T, D], through the fused
    kernel; with ``greedy``, also whether each target is the argmax (bool [B, T])."""
    rows, length, width = hidden.shape
    hidden, targets = hidden.reshape(rows * length, width), targets.reshape(-1)
    unembedding = model_unembedding(params, config)
    bias = unembedding_bias(params)
    if greedy and config.logprob == "pallas":
        raise ValueError("the pallas log-prob kernel does not compute the argmax (is_greedy)")
    if config.logprob == "pallas":
        logprobs = pallas_token_logprobs(
            hidden, unembedding[: config.vocab_size], targets,
            None if bias is None else bias[: config.vocab_size],
            softcap=config.final_logit_softcap, interpret=jax.default_backend() == "cpu",
        )
    elif mesh is None:
        logprobs = token_logprobs(
            hidden, unembedding[: config.vocab_size], targets,
            tile=tile, softcap=config.final_logit_softcap,
            bias=None if bias is None else bias[: config.vocab_size], with_argmax=greedy,
        )
    else:
        logprobs = sharded_token_logprobs(
            hidden, unembedding, targets, mesh=mesh, vocab_size=config.vocab_size,
            tile=tile, softcap=config.final_logit_softcap, bias=bias, with_argmax=greedy,
        )
    if greedy:
        logprobs, best = logprobs
        return logprobs.reshape(rows, length), (best == targets).reshape(rows, length)
    return logprobs.reshape(rows, length)


@partial(jax.jit, static_argnames=("config", "tile", "mesh", "greedy"))
def layer_log_likelihoods(
    params: Params,
    tokens: jax.Array,
    config: DecoderConfig,
    tile: int = DEFAULT_TILE,
    mesh: Mesh | None = None,
    lengths: jax.Array | None = None,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    greedy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """The logit lens in one forward pass: [L+1, B, T-1] float32 token log-probabilities.

    Entry i < L reads the residual stream after i layers (0: the embeddings, as transformers'
    ``hidden_states[0]``) through the final norm and the unembedding; entry L is the model's
    own output, computed exactly as :func:`token_log_likelihoods` does. The layers go through
    the fused kernel one at a time (``lax.map``), so no [L, B·T, V] tensor exists.
    ``greedy`` also returns the model's own argmax matches, as :func:`token_log_likelihoods`.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    hidden, layers = hidden_states(
        params, inputs, config, return_layers=True, lengths=_row_lengths(tokens, lengths),
        positions=positions, segment_ids=segment_ids,
    )
    residuals = jnp.concatenate(
        [embed(params, inputs, config, positions)[None], layers[:-1]], axis=0
    )
    lens = jax.lax.map(
        lambda residual: _hidden_log_likelihoods(
            params, final_norm(params, residual, config), targets, config, tile, mesh
        ),
        residuals,
    )
    own = _hidden_log_likelihoods(params, hidden, targets, config, tile, mesh, greedy)
    if greedy:
        own, matches = own
        return jnp.concatenate([lens, own[None]], axis=0), matches
    return jnp.concatenate([lens, own[None]], axis=0)


# Compiled scoring functions, keyed by everything XLA specialises on: the decoder config, the
# batch shape, the mesh and the params' structure, shapes, dtypes and shardings (not their
# values); least recently used first. Bounded: on CPU each executable holds its machine code in
# about a hundred memory maps, and a process that passes vm.max_map_count (65,530 by default)
# dies in the compiler, which a long job over many architectures would otherwise reach.
MAX_COMPILED = 64
_COMPILED: OrderedDict[tuple, object] = OrderedDict()
_compilations = 0


def compiled_scorer(
    params: Params, config: DecoderConfig, rows: int, length: int, mesh: Mesh,
    logit_lens: bool = False, packed: bool = False, greedy: bool = False,
):
    """The compiled scorer for this model shape, placement and batch shape, and the seconds
    spent compiling it now (0.0 when it was already compiled, e.g. for an earlier model of the
    same shape). ``rows`` must be a multiple of the mesh's data axis. ``logit_lens`` compiles
    :func:`layer_log_likelihoods` instead of :func:`token_log_likelihoods`; ``packed`` takes
    per-token positions, segment ids and lengths; ``greedy`` also returns the argmax matches.
    The :data:`MAX_COMPILED` most recently used scorers are kept."""
    global _compilations
    leaves, structure = jax.tree.flatten(params)
    key = (
        config, rows, length, mesh, structure,
        tuple((x.shape, x.dtype, x.sharding) for x in leaves),
    ) + (("logit_lens",) if logit_lens else ()) + (("packed",) if packed else ()) + (
        ("greedy",) if greedy else ()
    )
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key], 0.0
    started = time.perf_counter()
    tokens = jax.ShapeDtypeStruct((rows, length + 1), jnp.int32, sharding=batch_sharding(mesh))
    function = layer_log_likelihoods if logit_lens else token_log_likelihoods
    if packed:
        per_token = jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=batch_sharding(mesh))
        extra = {"lengths": per_token, "positions": per_token, "segment_ids": per_token}
    else:
        extra = {"lengths": jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=row_sharding(mesh))}
    with jax.default_matmul_precision(_matmul_precision(params)):
        compiled = function.lower(params, tokens, config, mesh=mesh, greedy=greedy, **extra).compile()
    _COMPILED[key] = compiled
    _compilations += 1
    if len(_COMPILED) > MAX_COMPILED:
        _COMPILED.popitem(last=False)
        # JAX's own compilation caches hold the evicted executable too; the kept ones live on
        # in _COMPILED.
        jax.clear_caches()
    return compiled, time.perf_counter() - started


def _matmul_precision(params: Params) -> str:
    """Full float32 products for float32 weights: JAX's default on accelerators rounds float32
    matmul inputs (TF32 on recent GPUs, bfloat16 passes on TPUs), about 1e-3 relative, far
    more than the 1e-3 nats per text the float32 scores are held to. 16-bit weights are already
    rounded; their products take the backend's default."""
    return "highest" if params["embed"].dtype == jnp.float32 else "default"


def compilation_count() -> int:
    """How many scorer shapes this process has compiled (evicted ones included)."""
    return _compilations


@dataclass
class LoadedModel:
    """A model ready to score: its checkpoint, decoder config, device params (placed on
    ``mesh``) and tokenizer. ``checkpoint`` is None for a model that lives in memory only (a
    :class:`jaxmap.module.DecoderLM`'s)."""

    reference: str
    checkpoint: Checkpoint | None
    architecture: str
    config: DecoderConfig
    params: Params
    tokenizer: object
    load_seconds: float
    mesh: Mesh


@dataclass
class ModelScores:
    """One model's row: per-text log-likelihood (nats), scored tokens, truncation flags."""

    loglik: np.ndarray
    ntokens: np.ndarray
    truncated: np.ndarray
    stats: dict = field(default_factory=dict)
    # With the logit lens: [L+1, N], row i read after i layers (0: the embeddings); the last
    # row is ``loglik`` itself.
    layer_loglik: np.ndarray | None = None
    # With ``keep_token_logprobs``: every scored token's log-prob, float32, texts in order
    # (``ntokens[j]`` values for text j); ``loglik`` is their float64 sum per text.
    token_logprobs: np.ndarray | None = None
    # For texts with contexts: whether every scored token is the model's argmax (lm-eval's
    # ``is_greedy``), and each continuation's token count, scored or not; None for texts without.
    is_greedy: np.ndarray | None = None
    continuation_tokens: np.ndarray | None = None


def pointwise_mutual_information(conditional: ModelScores, marginal: ModelScores) -> ModelScores:
    """Each text's log p(y | x) − log p(y): ``conditional`` scored its continuations after
    their contexts, ``marginal`` the same continuations alone. The token counts and greedy
    flags are the conditional's; a text is truncated where either was; the statistics add up."""
    stats = dict(conditional.stats)
    for name in ("seconds", "tokens", "compile_seconds", "compilations", "pieces"):
        stats[name] = conditional.stats[name] + marginal.stats[name]
    stats["tokens_per_second"] = stats["tokens"] / stats["seconds"] if stats["seconds"] else 0.0
    return ModelScores(
        loglik=conditional.loglik - marginal.loglik,
        ntokens=conditional.ntokens,
        truncated=conditional.truncated | marginal.truncated,
        stats=stats,
        is_greedy=conditional.is_greedy,
        continuation_tokens=conditional.continuation_tokens,
    )


def load_model(
    reference: str | Checkpoint,
    dtype: str = DEFAULT_DTYPE,
    cache_dir=None,
    mesh: Mesh | str | None = None,
) -> LoadedModel:
    """Resolve (unless given a resolved :class:`Checkpoint`), validate and load one model.

    ``mesh``: a :class:`Mesh` with axes ``data`` and ``model``, a spec such as
    ``"data=2,model=4"``, or None for every local device on the data axis
    (:func:`jaxmap.sharding.make_mesh`). Weights are assembled on the host in ``dtype`` and
    their final layout, then put on the mesh with one transfer per parameter.
    """
    if dtype not in DTYPES:
        raise JaxmapError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    started = time.perf_counter()
    mesh = make_mesh(mesh)
    checkpoint = reference if isinstance(reference, Checkpoint) else resolve(reference, cache_dir=cache_dir)
    reference = checkpoint.reference
    architecture, config = translated_config(checkpoint)
    params = place_params(
        checkpoint.load_params(architecture, config, dtype), config, mesh
    )
    tokenizer = load_tokenizer(checkpoint.directory)
    params = jax.block_until_ready(params)
    return LoadedModel(
        reference, checkpoint, architecture, config, params, tokenizer,
        time.perf_counter() - started, mesh,
    )


def _layout_batch(
    tokens: TokenizedTexts, pieces: Pieces, batch: Batch, rows: int
) -> dict[str, np.ndarray]:
    """The batch's host arrays: right-padded tokens [rows, length + 1] and, per row, its token
    count [rows]; packed batches give per-token positions, segment ids and lengths (the
    piece's token count) [rows, length] instead. Padding rows and gaps are zeros, in segments
    of their own."""
    width = batch.length + 1
    batch_tokens = np.zeros((rows, width), np.int32)
    row_of = batch.row_of if batch.packed else np.arange(len(batch.indices))
    offsets = batch.offsets if batch.packed else np.zeros(len(batch.indices), np.int64)
    if batch.packed:
        positions = np.zeros((rows, width), np.int32)
        lengths = np.zeros((rows, width), np.int32)
        # Every position starts as padding, one segment past any piece's; pieces are numbered
        # left to right in their rows, so the ids never decrease along a row.
        segments = np.full((rows, width), len(batch.indices), np.int32)
    else:
        lengths = np.zeros(rows, np.int32)
    for number, (piece, row, offset) in enumerate(zip(batch.indices, row_of, offsets)):
        text, start, stop = pieces.text[piece], pieces.start[piece], pieces.stop[piece]
        size = stop - start
        batch_tokens[row, offset : offset + size] = tokens[text][start:stop]
        if batch.packed:
            positions[row, offset : offset + size] = np.arange(size)
            lengths[row, offset : offset + size] = size
            segments[row, offset : offset + size] = number
        else:
            lengths[row] = size
    if not batch.packed:
        return {"tokens": batch_tokens, "lengths": lengths}
    return {
        "tokens": batch_tokens, "lengths": lengths[:, :-1], "positions": positions[:, :-1],
        "segment_ids": segments[:, :-1],
    }


def position_flops(config: DecoderConfig) -> float:
    """Matmul FLOPs of one computed position: every weight it passes through, the unembedding
    included (experts as dispatched: all of them)."""
    width, heads, kv_heads, head_dim = (
        config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    )
    attention = 2 * width * heads * head_dim + 2 * width * kv_heads * head_dim
    matrices = 3 if config.gated_mlp else 2
    mlp = matrices * width * config.intermediate_size if not config.num_experts or config.shared_expert else 0
    if config.num_experts:
        mlp += 3 * width * config.expert_intermediate_size * config.num_experts
    return 2.0 * (config.num_layers * (attention + mlp) + config.vocab_size * width)


def score_flops(config: DecoderConfig) -> float:
    """FLOPs of one computed attention score (one query-key pair, every head and layer): the
    product with the key and the weighting of the value."""
    return 4.0 * config.num_layers * config.num_heads * config.head_dim


def plan_scoring(
    config: DecoderConfig, lengths: np.ndarray, batch_tokens: int, long_texts: str = "truncate",
    stride: int | None = None, packing: str = "auto", first_targets: np.ndarray | None = None,
) -> tuple[Pieces, PlanChoice]:
    """The pieces texts of ``lengths`` tokens become under ``long_texts``
    (:func:`jaxmap.batching.split_texts`; ``first_targets`` for texts with contexts) and the
    batch plan that scores them at the least estimated cost (:func:`jaxmap.batching.choose_plan`)."""
    pieces = split_texts(lengths, config.max_positions, long_texts, stride, first_targets)
    unpackable = _packing_obstacle(config)
    choice = choose_plan(
        pieces.sizes, batch_tokens, config.max_positions - 1, position_flops(config),
        score_flops(config), partial(_attention_block, config), "buckets" if unpackable else packing,
    )
    if unpackable and packing == "pack":
        choice = PlanChoice(choice.plan, f"buckets (cannot pack: {unpackable})", choice.estimates)
    return pieces, choice


def _attention_block(config: DecoderConfig, length: int) -> int:
    """The score block the attention path for rows of ``length`` computes at a time: the
    blockwise path's block, or the whole row for the paths that compute the full square (the
    Pallas kernel skips masked blocks too, but its cost on CPU, in interpret mode, is not what
    the plan should be tuned for)."""
    path = attention_path(config, length, jnp.float32, packed=True)
    return block_size(length) if path == "blockwise" else length


def check_kernels(attention: str, logprob: str, mesh: Mesh) -> None:
    """Raise :class:`JaxmapError` in one line unless ``attention`` and ``logprob`` are kernels
    :class:`~jaxmap.scoring_options.ScoringOptions` accepts and the pallas kernels, if asked
    for, have a one-device ``mesh`` (:meth:`~jaxmap.scoring_options.ScoringOptions.check_mesh`)."""
    ScoringOptions(attention=attention, logprob=logprob).check_mesh(mesh)


def with_kernels(config: DecoderConfig, attention: str, logprob: str, mesh: Mesh) -> DecoderConfig:
    """``config`` computing attention on path ``attention`` and the log-probs with ``logprob``
    (:func:`check_kernels`); raises :class:`JaxmapError` in one line for a path that cannot
    compute this model (e.g. ``xla_fused`` with soft-capping)."""
    return _with_kernels(config, ScoringOptions(attention=attention, logprob=logprob), mesh)


def _with_kernels(config: DecoderConfig, options: ScoringOptions, mesh: Mesh) -> DecoderConfig:
    """:func:`with_kernels` for options already validated."""
    options.check_mesh(mesh)
    config = dataclasses.replace(config, attention=options.attention, logprob=options.logprob)
    try:
        attention_path(config, config.max_positions, jnp.float32, packed=False)
    except ValueError as error:
        raise JaxmapError(f"attention path {options.attention!r}: {error}") from None
    return config


def _packing_obstacle(config: DecoderConfig) -> str | None:
    """Why this model's texts cannot share rows, or None."""
    if config.alibi_bfloat16:
        # Its bias rounds each key's absolute position to bfloat16, so a text scores
        # differently at another offset of a row.
        return "its bfloat16 ALiBi depends on absolute positions"
    return None


def score_tokens(
    model: LoadedModel,
    tokens: TokenizedTexts,
    batch_tokens: int | None = None,
    progress: bool = True,
    logit_lens: bool = False,
    keep_token_logprobs: bool = False,
    long_texts: str = "truncate",
    stride: int | None = None,
    packing: str = "auto",
    attention: str = "auto",
    logprob: str = "fused",
    *,
    options: ScoringOptions | None = None,
) -> ModelScores:
    """Score pre-tokenized texts with a loaded model.

    The settings come whole as ``options`` (:class:`~jaxmap.scoring_options.ScoringOptions`;
    its ``dtype`` and ``bos_policy`` were applied already, when the model was loaded and the
    texts tokenized), or as the keywords below, which build the options; with ``options``,
    a keyword that contradicts it raises.

    ``long_texts``: texts longer than the model's context are cut to it (``"truncate"``) or
    scored in windows ``stride`` tokens apart (``"rolling"``, default stride half the context),
    so that every token is scored (:func:`jaxmap.batching.split_texts`). ``packing``:
    ``"auto"`` packs texts into rows or buckets them by length, whichever the cost estimate
    prefers; ``"pack"`` or ``"buckets"`` force one (``stats["batching"]`` says which ran).
    ``attention`` and ``logprob`` choose how, not what, is computed (:func:`with_kernels`): the
    attention path (``"auto"`` picks per backend and row length) and the log-prob kernel
    (``"fused"``, or ``"pallas"`` for the hand-written Pallas kernel).

    ``logit_lens`` also scores every layer's residual stream through the final norm and the
    unembedding, in the same forward pass (:func:`layer_log_likelihoods`), into
    ``ModelScores.layer_loglik``. ``keep_token_logprobs`` keeps every scored token's log-prob
    (``ModelScores.token_logprobs``).

    Texts with contexts (``tokens.first_targets``) score their continuation tokens only, and
    ``ModelScores.is_greedy`` says whether each continuation is the model's greedy one (the
    ``pallas`` log-prob kernel does not compute that and is refused for them).

    ``batch_tokens`` (padded tokens per batch, all data shards together) defaults to
    :func:`default_batch_tokens` per data shard. Batch rows are padded with empty rows to a
    multiple of the mesh's data axis.
    """
    options = ScoringOptions.from_arguments(
        "score_tokens", options, batch_tokens=batch_tokens, logit_lens=logit_lens,
        keep_token_logprobs=keep_token_logprobs, long_texts=long_texts, stride=stride,
        packing=packing, attention=attention, logprob=logprob,
    )
    config = _with_kernels(model.config, options, model.mesh)
    greedy = tokens.first_targets is not None
    if greedy and options.logprob == "pallas":
        raise JaxmapError(
            "the pallas log-prob kernel does not compute is_greedy, which texts with contexts "
            "record; use --logprob fused"
        )
    shards = model.mesh.shape[DATA]
    batch_tokens = options.batch_tokens or default_batch_tokens() * shards
    n_ctx = config.max_positions
    pieces, choice = plan_scoring(
        config, tokens.lengths, batch_tokens, options.long_texts, options.stride, options.packing,
        tokens.first_targets,
    )
    plan = choice.plan
    scored = np.bincount(pieces.text, weights=pieces.scored, minlength=len(tokens)).astype(np.int64)
    loglik = np.zeros(len(tokens), np.float64)
    piece_logprobs: list[np.ndarray | None] = [None] * len(pieces) if options.keep_token_logprobs else []
    layer_loglik = np.zeros((config.num_layers + 1, len(tokens)), np.float64) if options.logit_lens else None
    is_greedy = np.ones(len(tokens), bool) if greedy else None
    compiled_before = compilation_count()
    # Compile every batch shape first, so that compiling never competes with scoring for the
    # cores and the tokens/s figure measures scoring alone.
    compile_seconds = 0.0
    scorers = {}
    for rows, length in sorted(plan.shapes):
        scorers[rows, length], seconds = compiled_scorer(
            model.params, config, -(-rows // shards) * shards, length, model.mesh,
            options.logit_lens, packed=plan.packed, greedy=greedy,
        )
        compile_seconds += seconds
    bar = tqdm(
        total=len(tokens), desc=model.reference, unit="text", leave=False, disable=not progress
    )
    # A text is done when its last piece is; texts without a piece are done now.
    pieces_left = np.bincount(pieces.text, minlength=len(tokens))
    bar.update(int((pieces_left == 0).sum()))
    started = time.perf_counter()
    done_tokens = 0

    def collect(pending) -> None:
        nonlocal done_tokens
        batch, result = pending
        if greedy:
            result, matches = result
            matches = to_host(matches)
        values = to_host(result).astype(np.float64)
        row_of = batch.row_of if batch.packed else np.arange(len(batch.indices))
        offsets = batch.offsets if batch.packed else np.zeros(len(batch.indices), np.int64)
        for piece, row, offset in zip(batch.indices, row_of, offsets):
            text = pieces.text[piece]
            # The value at row offset t is the log-prob of the token at t + 1.
            targets = slice(offset + pieces.first_target[piece] - 1, offset + pieces.sizes[piece] - 1)
            if options.logit_lens:
                layer_loglik[:-1, text] += values[:-1, row, targets].sum(axis=1)
            own = values[-1, row, targets] if options.logit_lens else values[row, targets]
            loglik[text] += own.sum()
            if greedy:
                is_greedy[text] &= bool(matches[row, targets].all())
            if options.keep_token_logprobs:  # float32 on the device: casting back is exact
                piece_logprobs[piece] = own.astype(np.float32)
            pieces_left[text] -= 1
            if pieces_left[text] == 0:
                bar.update(1)
        done_tokens += int(pieces.scored[batch.indices].sum())
        bar.set_postfix(tok_s=f"{done_tokens / (time.perf_counter() - started):.0f}")

    pending = None
    token_sharding = batch_sharding(model.mesh)
    length_sharding = row_sharding(model.mesh)
    for batch in plan.batches:
        rows = -(-batch.rows // shards) * shards
        arrays = _layout_batch(tokens, pieces, batch, rows)
        placed = {
            name: put(values, length_sharding if values.ndim == 1 else token_sharding)
            for name, values in arrays.items()
        }
        # Dispatch this batch before pulling the previous one back, so the host work of
        # laying out and summing overlaps device compute.
        result = scorers[batch.rows, batch.length](model.params, placed.pop("tokens"), **placed)
        if pending is not None:
            collect(pending)
        pending = (batch, result)
    if pending is not None:
        collect(pending)
    bar.close()
    seconds = time.perf_counter() - started
    if options.logit_lens:
        layer_loglik[-1] = loglik  # the last layer read through the final norm is the model
    token_logprobs = None
    if options.keep_token_logprobs:
        # Pieces are listed text by text, each text's in order, so this is every text's tokens
        # in order.
        token_logprobs = np.concatenate([np.zeros(0, np.float32), *piece_logprobs])
    return ModelScores(
        loglik=loglik,
        layer_loglik=layer_loglik,
        token_logprobs=token_logprobs,
        is_greedy=is_greedy,
        continuation_tokens=(tokens.lengths - tokens.first_targets).astype(np.int32) if greedy else None,
        ntokens=scored.astype(np.int32),
        truncated=(tokens.lengths > n_ctx) & (options.long_texts == "truncate"),
        stats={
            "seconds": seconds,
            "tokens": int(scored.sum()),
            "tokens_per_second": float(scored.sum() / seconds) if seconds else 0.0,
            "padding_fraction": plan.padding_fraction,
            "batch_shapes": len(plan.shapes),
            "batching": choice.name,
            "batching_estimates": choice.estimates,
            "long_texts": options.long_texts,
            "stride": (options.stride or default_stride(n_ctx)) if options.long_texts == "rolling" else None,
            "pieces": len(pieces),
            "compilations": compilation_count() - compiled_before,
            "compile_seconds": compile_seconds,
            "mesh": describe_mesh(model.mesh),
            "attention": options.attention,
            "logprob": options.logprob,
        },
    )
