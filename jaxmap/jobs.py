"""Scoring jobs: many models on one text set, one committed store row per model.

A job runs unattended over a model list of any length:

1. every reference is resolved and validated cheaply (config, tokenizer, weight headers) before
   anything is scored; a reference that fails is recorded with its reason and the job goes on;
2. the next model loads in a background thread while the current one scores;
3. each finished row is checked (every value finite) and committed to the store atomically; a
   model that fails while loading or scoring is recorded and the job goes on;
4. the job ends with a summary (scored, skipped, failed with reasons, tokens/s), also recorded
   beside the store in ``<store>.run.json``, with the records of the jobs before it.

Several jobs may write one store at once: a model that another job committed meanwhile is
skipped (reported as committed by another job), never failed.

An interrupt (SIGINT, or SIGTERM through the CLI) abandons the current model: its half-computed
row is never committed, and every committed row stays.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from . import compile_cache, distributed
from ._version import __version__
from .checkpoints import Checkpoint, WeightPrefetcher, expand_references, resolve, validate
from .checkpoints.translated import translated_config
from .engine import LoadedModel, ModelScores, load_model, pointwise_mutual_information, score_tokens
from .errors import JaxmapError, ModelsFailedError, StoreError
from .planning import SHARD_RULES, plan_shards
from .scoring_options import DEFAULT_DTYPE, ScoringOptions
from .sharding import make_mesh
from .store import RowExistsError, Store, StoreWriter, open_store
from .texts import TextSet, as_text_set
from .tokenization import cached_tokenize


# The reason of a model skipped because another job on the store committed its row meanwhile.
BY_ANOTHER_JOB = "committed by another job on this store while this one ran"


@dataclass
class ModelOutcome:
    """What happened to one model of a job."""

    reference: str
    status: str  # "scored", "skipped" (already in the store) or "failed"
    reason: str = ""
    traceback: str = ""  # for failures that are bugs in jaxmap, not problems of the model
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    # Seconds per phase, for those the model reached: resolve, validate, download (in the
    # background), wait (the job waiting for its download and load), load, tokenize, compile,
    # score, commit. A row's metadata keeps those before the commit as "phase_seconds".
    phases: dict[str, float] = field(default_factory=dict)
    # Where the model's wall time went, scoring and everything around it (see _overhead and
    # docs/store.md); empty for a model that did not reach its turn to score.
    overhead: dict = field(default_factory=dict)


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str):
    """Add the seconds the block takes to ``phases[name]``, whether or not it raises."""
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


@dataclass
class JobSummary:
    """The outcome of a scoring job, model by model."""

    store: str
    outcomes: list[ModelOutcome] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    # When the job began (the summary is made then), local time, ISO 8601.
    started: str = field(init=False, default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def with_status(self, status: str) -> list[ModelOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def failures(self) -> dict[str, str]:
        """Failed references and why."""
        return {o.reference: o.reason for o in self.with_status("failed")}

    @property
    def tokens(self) -> int:
        return sum(o.tokens for o in self.outcomes)

    @property
    def tokens_per_second(self) -> float:
        """Scored tokens over the whole job's wall time (loading and compiling included)."""
        return self.tokens / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        """A human-readable summary."""
        scored, skipped, failed = (self.with_status(s) for s in ("scored", "skipped", "failed"))
        out = [
            f"{self.store}: {len(scored)} scored, {len(skipped)} already in the store, "
            f"{len(failed)} failed"
            + (", interrupted" if self.interrupted else "")
            + f"; {self.tokens} tokens in {self.seconds:.1f} s ({self.tokens_per_second:.0f} tok/s "
            "for the whole job)"
        ]
        out += [
            f"  scored  {o.reference}: {o.tokens_per_second:.0f} tok/s"
            + (f", {o.overhead['outside_scoring']:.2f} s outside scoring" if o.overhead else "")
            for o in scored
        ]
        out += [f"  skipped {o.reference}: {o.reason}" for o in skipped if o.reason]
        out += [f"  FAILED  {o.reference}: {o.reason}" for o in failed]
        if compile_cache.directory() is not None:
            made = compile_cache.counts()
            out.append(
                f"  programs: {made['compiled']} compiled, {made['loaded']} loaded from the "
                f"compilation cache {compile_cache.directory()}"
            )
        return out

    def to_json(self) -> dict:
        return {
            "store": self.store,
            "started": self.started,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "seconds": self.seconds,
            "tokens": self.tokens,
            "tokens_per_second": self.tokens_per_second,
            "interrupted": self.interrupted,
            "models": [asdict(o) for o in self.outcomes],
            # The job's own time outside its models' turns: the text set, opening and reading
            # the store, ordering the list, compacting (not this record's writing).
            "outside_models_seconds": max(
                self.seconds - sum(o.overhead.get("wall", 0.0) for o in self.outcomes), 0.0
            ),
            **({"compile_cache": {"directory": str(compile_cache.directory()), **compile_cache.counts()}}
               if compile_cache.directory() else {}),
        }


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"I/N"`` (0 ≤ I < N) → ``(I, N)``: this job scores shard I of N
    (:func:`jaxmap.planning.plan_shards` says which models)."""
    if shard is None or isinstance(shard, tuple):
        return shard
    index, slash, count = str(shard).partition("/")
    try:
        parsed = int(index), int(count)
    except ValueError:
        parsed = None
    if not slash or parsed is None or not 0 <= parsed[0] < parsed[1]:
        raise JaxmapError(f"--shard {shard!r}: expected I/N with 0 <= I < N, e.g. 0/8")
    return parsed


def _check_finite(reference: str, scores: ModelScores, texts: TextSet) -> None:
    bad = np.flatnonzero(~np.isfinite(scores.loglik))
    if bad.size:
        shown = ", ".join(texts.ids[i] for i in bad[:3]) + (" ..." if bad.size > 3 else "")
        raise JaxmapError(
            f"non-finite log-likelihood on {bad.size} of {len(texts)} texts (ids {shown}); "
            "the weights may hold NaN or inf"
        )


def layer_row_name(model: str, layer: int) -> str:
    """The store name (and key) of a logit-lens row: ``MODEL@layer{i}``, ``i`` layers read
    (0: the embeddings; the model's last layer is its own output)."""
    return f"{model}@layer{layer}"


def _failure(reference: str, error: BaseException, phases: dict[str, float] | None = None) -> ModelOutcome:
    if isinstance(error, JaxmapError):
        # The summary names the model already.
        return ModelOutcome(reference, "failed", str(error).removeprefix(f"{reference}: "), phases=dict(phases or {}))
    # A bug in jaxmap, not a problem of the model: one model's bug must not stop a 1,000-model
    # job, but its traceback is kept in the run summary.
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return ModelOutcome(
        reference, "failed",
        f"{type(error).__name__}: {first_line} (a bug in jaxmap; the traceback is in the run summary)",
        traceback="".join(traceback.format_exception(error)), phases=dict(phases or {}),
    )


# Job records kept in STORE.run.json, newest last.
_KEPT_JOBS = 100


def _recorded_jobs(path: Path) -> list[dict]:
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return []  # none yet, or unreadable: the summary is a convenience
    if isinstance(recorded, dict) and isinstance(recorded.get("jobs"), list):
        return recorded["jobs"]
    # One job's summary, as jaxmap wrote it before jobs shared a store.
    return [recorded] if isinstance(recorded, dict) and "models" in recorded else []


def _write_summary(summary: JobSummary, writer: StoreWriter) -> None:
    """Add this job's record to ``STORE.run.json`` under the writers' lock, so that jobs
    finishing at once on one store keep each other's records."""
    path = writer.path.with_name(writer.path.name + ".run.json")
    temporary = path.with_name(f".{path.name}.tmp")  # one name: written under the lock
    try:
        with writer.locked():
            jobs = (_recorded_jobs(path) + [summary.to_json()])[-_KEPT_JOBS:]
            temporary.write_text(json.dumps({"store": summary.store, "jobs": jobs}, indent=2))
            temporary.replace(path)
    except (OSError, StoreError):
        temporary.unlink(missing_ok=True)  # the summary is a convenience; the rows are safe


@distributed.together
def score_job(
    models: Sequence[str] | str,
    texts: TextSet | str | Path | Sequence[str],
    out: str | Path,
    *,
    dtype: str = DEFAULT_DTYPE,
    bos_policy: str = "full",
    batch_tokens: int | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    shard: str | tuple[int, int] | None = None,
    shard_by: str = "cost",
    mesh: str | None = None,
    delete_after: bool = False,
    disk_budget: int | None = None,
    report: Callable[[str], None] | None = None,
    logit_lens: bool = False,
    save_token_logprobs: bool = False,
    long_texts: str = "truncate",
    stride: int | None = None,
    packing: str = "auto",
    attention: str = "auto",
    logprob: str = "fused",
    chat_template: bool = False,
    pmi: bool = False,
    options: ScoringOptions | None = None,
) -> JobSummary:
    """Score every model on every text into the store ``out``; see the module docstring.

    Models whose rows the store already holds (matched by canonical reference) are skipped, so
    re-running a killed job computes only what is missing. ``shard="I/N"`` scores shard I of N,
    for running one list as N independent jobs (join their stores with
    :func:`jaxmap.store.merge`): with ``shard_by="cost"`` the models are balanced by estimated
    cost, read from their configs (:func:`jaxmap.planning.plan_shards`; each shard reports its
    share), with ``"index"`` shard I takes models I, I+N, I+2N, …; spellings of one model on
    disk (``m``, ``./m/``) count once before the list is cut. Several jobs may write one store
    at once: a model that another job committed meanwhile is skipped, and each job adds its
    record to the run summary. ``mesh`` (``"data=D,model=M"``) spans every device of every
    process (:mod:`jaxmap.distributed`); by default all of them on the data axis.
    Hub models are validated from their config and tokenizer alone; their weights download in
    the background ahead of the scoring (:class:`~jaxmap.checkpoints.WeightPrefetcher`).
    ``delete_after`` deletes a hub model's downloaded weights once it is scored; ``disk_budget``
    (bytes) bounds the downloaded weights held at once (default: a few times the largest).
    ``report`` receives one line per event (default: printed when ``progress``).
    ``logit_lens`` adds, for every model, one row per layer, ``MODEL@layer{i}`` for i = 0 (the
    embeddings) … L (the model's output, equal to its own row), from the same forward pass; its
    metadata names the layer and the parent model. A model is skipped only when all its rows
    are in the store; otherwise only the missing rows are committed. ``save_token_logprobs``
    stores every scored token's log-prob with each model's row (not with layer rows; see
    docs/store.md); a model already in the store keeps the row it has. ``long_texts``
    (``"truncate"`` or ``"rolling"``, with ``stride``) and ``packing`` (``"auto"``, ``"pack"``,
    ``"buckets"``) are those of :func:`jaxmap.engine.score_tokens`; the long-text policy is a
    store setting, since it changes the numbers of every text longer than a context.
    ``attention`` and ``logprob`` choose the attention path and the log-prob kernel
    (:func:`jaxmap.engine.score_tokens`); each model's metadata records them.

    A text set with contexts stores log p(continuation | context) and, per text, whether the
    continuation is the model's greedy one (docs/method.md). ``chat_template`` scores each
    continuation as the assistant's reply to its context through the model's own chat
    template; ``pmi`` stores log p(continuation | context) − log p(continuation) instead. Both
    are store settings and need a text set with contexts. ``options``
    gives these scoring settings whole instead (:class:`~jaxmap.scoring_options.ScoringOptions`,
    ``save_token_logprobs`` being its ``keep_token_logprobs``); a keyword then left at its
    default is ignored, and one that contradicts ``options`` raises. Failed models
    are in the returned summary; this raises only for errors that stop the whole job (a bad
    text set, a foreign store, a full disk).

    In a multi-host run every process calls this with the same arguments; process 0 alone
    writes the store and the run summary. A model that one process cannot validate, load or
    tokenize fails on every process (the reason names the process) and the job goes on; any
    other failure of one process stops every process with the same error, naming it
    (:func:`jaxmap.distributed.together`).
    """
    options = ScoringOptions.from_arguments(
        "score_job", options, dtype=dtype, bos_policy=bos_policy, batch_tokens=batch_tokens,
        long_texts=long_texts, stride=stride, packing=packing, attention=attention,
        logprob=logprob, logit_lens=logit_lens, keep_token_logprobs=save_token_logprobs,
        chat_template=chat_template, pmi=pmi,
    )
    shard = parse_shard(shard)
    if shard_by not in SHARD_RULES:
        raise JaxmapError(f"unknown shard rule {shard_by!r}; choose one of {', '.join(SHARD_RULES)}")
    say = report or (tqdm.write if progress else (lambda line: None))
    started = time.perf_counter()
    text_set = as_text_set(texts)
    if (options.chat_template or options.pmi) and not text_set.conditional:
        wanted = "--chat-template" if options.chat_template else "--pmi"
        raise JaxmapError(
            f"{text_set.source}: {wanted} needs texts with a context: give each line 'context' "
            "and 'continuation' (or 'prompt' and 'response')"
        )
    references = expand_references([models] if isinstance(models, str) else models)
    if shard is not None:
        plan = plan_shards(references, shard[1], text_set, by=shard_by, cache_dir=cache_dir)
        references = plan.models(shard[0])
        for line in plan.lines(shard[0]):
            say(line)
    out = Path(out)
    device_mesh = make_mesh(mesh, devices=jax.devices())
    options.check_mesh(device_mesh)
    # Process 0 alone opens the store; the others learn from it which models are done.
    writer = (
        StoreWriter(out, text_set, options.store_settings, created_by=f"jaxmap {__version__}")
        if distributed.process_index() == 0 else None
    )
    summary = JobSummary(str(out))
    # Held for the whole job, shared with other jobs on this store: merge refuses it meanwhile.
    with writer.job() if writer is not None else contextlib.nullcontext():
        # Only process 0 reads the store; the processes agree on what to score after validating.
        done = set(writer.completed_keys()) if writer is not None else set()

        # Resolve and validate everything before scoring anything; loading reuses these.
        todo: list[Checkpoint] = []
        wanted: dict[str, list[str]] = {}  # canonical key -> the keys of the rows it gives
        phases_of: dict[str, dict[str, float]] = {}  # canonical key -> seconds per phase
        shape_of: dict[str, object] = {}  # canonical key -> its decoder config
        for reference in tqdm(references, desc="validating", unit="model", disable=not progress or len(references) < 2):
            phases: dict[str, float] = {}
            try:
                with _timed(phases, "resolve"):
                    checkpoint = resolve(reference, cache_dir=cache_dir, progress=progress)
                with _timed(phases, "validate"):
                    validate(checkpoint)
                    _, config = translated_config(checkpoint)
            except Exception as error:  # noqa: BLE001 - recorded; the other models go on
                summary.outcomes.append(_failure(reference, error, phases))
                say(f"jaxmap: {reference}: cannot be scored: {summary.outcomes[-1].reason}")
                continue
            key = checkpoint.canonical
            keys = [key] + (
                [layer_row_name(key, i) for i in range(config.num_layers + 1)] if options.logit_lens else []
            )
            if all(k in done for k in keys) or key in wanted:
                summary.outcomes.append(ModelOutcome(reference, "skipped", phases=phases))
                continue
            wanted[key] = keys
            phases_of[key] = phases
            shape_of[key] = config
            todo.append(checkpoint)
        # Models of one shape share their compiled scorers (weights are arguments): scored one
        # after another, each shape's scorers are compiled (or loaded from the compilation
        # cache) once, where a list interleaving more shapes than the engine keeps compiled
        # (engine.MAX_COMPILED) would evict and rebuild them model after model. The list's
        # order within a shape, shapes in the order they first appear; the same on every host.
        first_seen: dict[object, int] = {}
        for checkpoint in todo:
            first_seen.setdefault(shape_of[checkpoint.canonical], len(first_seen))
        todo.sort(key=lambda checkpoint: first_seen[shape_of[checkpoint.canonical]])
        if distributed.joined():
            todo = _agree_on_models(references, todo, summary, say)

        # The token cache sits beside the store, which only process 0 may touch.
        token_cache = writer.path.with_name(writer.path.name + ".tokens") if writer is not None else None
        overall = tqdm(total=len(todo), desc="models", unit="model", disable=not progress or len(todo) < 2)
        loader = (
            concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxmap-loader")
            if distributed.process_count() == 1 else _InOrder()
        )
        # Hub weights download in the background, ahead of the scoring, under the disk budget.
        # Models on disk score before earlier ones still downloading, so that a stalled download
        # holds up no local model; the processes of a multi-host job keep one order.
        prefetcher = WeightPrefetcher(
            todo, disk_budget=disk_budget, delete_after=delete_after,
            ready_first=distributed.process_count() == 1,
        )

        def load(checkpoint: Checkpoint) -> LoadedModel:
            try:
                prefetcher.wait(checkpoint)
            finally:
                phases_of[checkpoint.canonical]["download"] = prefetcher.download_seconds(checkpoint)
            return load_model(checkpoint, dtype=options.dtype, mesh=device_mesh)

        def load_next() -> tuple[Checkpoint | None, concurrent.futures.Future | None]:
            checkpoint = prefetcher.take_next()
            return checkpoint, loader.submit(load, checkpoint) if checkpoint is not None else None

        upcoming = load_next()
        try:
            for _ in todo:
                turn_started = time.perf_counter()
                # The next model loads while this one scores; its weights may wait for this one's
                # release when the disk budget is tight.
                (checkpoint, current), upcoming = upcoming, load_next()
                # Another job on this store may have committed it since this one began.
                # (Process 0 decides: it alone reads the store.)
                done = set(writer.completed_keys()) if writer is not None else set()
                if distributed.share_from_first(all(k in done for k in wanted[checkpoint.canonical])):
                    outcome = ModelOutcome(
                        checkpoint.reference, "skipped", BY_ANOTHER_JOB, phases=phases_of[checkpoint.canonical],
                    )
                else:
                    outcome = _score_one(
                        current, checkpoint, text_set, writer, token_cache, options, progress, say,
                        done, phases_of[checkpoint.canonical], started=turn_started,
                    )
                prefetcher.release(checkpoint)
                summary.outcomes.append(outcome)
                overall.update(1)
        except BaseException as error:
            summary.interrupted = distributed.stopped_by_interrupt(error)
            raise
        finally:
            overall.close()
            # Never wait for a load in flight: an interrupted job must stop now.
            loader.shutdown(wait=False, cancel_futures=True)
            prefetcher.close()
            summary.seconds = time.perf_counter() - started
            if writer is not None:
                if not summary.interrupted:
                    _compact(writer, say)
                _write_summary(summary, writer)
    return summary


class _InOrder:
    """Loads a model when its result is asked for, in the calling thread.

    Multi-host runs load this way: every process must issue its device work in the same order,
    and a background loader would interleave with the scoring differently on each host.
    """

    class _Deferred:
        def __init__(self, function, argument) -> None:
            self._call = lambda: function(argument)

        def result(self):
            return self._call()

    def submit(self, function, argument) -> "_InOrder._Deferred":
        return self._Deferred(function, argument)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Nothing runs in the background."""


class _FailedElsewhere(JaxmapError):
    """A model that another process of a multi-host run could not prepare (the message says
    which process and why)."""


def _agree_on_models(
    references: list[str], todo: list[Checkpoint], summary: JobSummary, say: Callable[[str], None],
) -> list[Checkpoint]:
    """Multi-host: make every process's validation outcomes one, the same on every process.

    Process 0 alone knows the store, so its "skipped" (already there, or a second spelling of a
    model) stands; otherwise a model that any process could not validate fails everywhere, with
    the reason of the first process that failed it, naming that process unless every process
    failed it alike. The models to score come in process 0's order. Updates ``summary`` and
    returns the models to score.
    """
    mine: dict[str, list[str]] = {}
    for outcome in summary.outcomes:
        mine.setdefault(outcome.reference, [outcome.status, outcome.reason])
    for checkpoint in todo:
        mine[checkpoint.reference] = ["todo", ""]
    names = list(dict.fromkeys(references))
    everyone = distributed.gather(
        "validated", {"models": [mine[name] for name in names], "order": [c.reference for c in todo]},
    )
    if any(len(theirs["models"]) != len(names) for theirs in everyone):
        counts = ", ".join(f"process {p}: {len(t['models'])}" for p, t in enumerate(everyone))
        raise _Disagreement(f"the processes were given different model lists ({counts} models)")
    mine_checkpoints = {checkpoint.reference: checkpoint for checkpoint in todo}
    to_score: set[str] = set()
    for position, name in enumerate(names):
        statuses = [theirs["models"][position] for theirs in everyone]
        if statuses[0][0] == "skipped":
            agreed = ["skipped", statuses[0][1]]
        else:
            reason = distributed.merged_reason([why if status == "failed" else None for status, why in statuses])
            if reason is None and any(status != "todo" for status, _ in statuses):
                raise _Disagreement(
                    f"{name}: process 0 would score it, but another process counts it as another "
                    "model of the list: the hosts' files differ"
                )
            agreed = ["todo", ""] if reason is None else ["failed", reason]
        if agreed[0] == "todo":  # every process would score it
            to_score.add(name)
        elif agreed != mine[name]:
            # This process's outcome for the model changes to the agreed one.
            before = [o for o in summary.outcomes if o.reference == name]
            summary.outcomes = [o for o in summary.outcomes if o.reference != name]
            summary.outcomes.append(
                ModelOutcome(name, agreed[0], agreed[1], phases=before[0].phases if before else {})
            )
            if agreed[0] == "failed":
                say(f"jaxmap: {name}: cannot be scored: {agreed[1]}")
    return [mine_checkpoints[name] for name in everyone[0]["order"] if name in to_score]


class _Disagreement(distributed.DistributedError):
    agreed = True  # every process reads the same outcomes, so every process raises it alike


def _score_one(
    loading: concurrent.futures.Future,
    checkpoint: Checkpoint,
    text_set: TextSet,
    writer: StoreWriter | None,
    token_cache: Path | None,
    options: ScoringOptions,
    progress: bool,
    say: Callable[[str], None],
    committed: set[str],
    phases: dict[str, float],
    started: float | None = None,
) -> ModelOutcome:
    """Load (already under way), score and commit one model (and with ``options.logit_lens``
    its layer rows, those whose keys are not ``committed`` yet); a failure becomes the outcome.
    The seconds of each phase are added to ``phases``."""
    reference = checkpoint.reference
    # In a multi-host run every process prepares the model on its own, then they score it
    # together: they agree first that every one of them is ready.
    several, stage = distributed.joined(), "prepare"
    extra: dict = {}  # details of the overhead breakdown (_overhead)
    try:
        with _timed(phases, "wait"):
            model: LoadedModel = loading.result()
        phases["load"] = model.load_seconds
        extra["load_detail"] = _load_detail(checkpoint, model.load_seconds, phases)
        cache_before = _token_cache_files(token_cache)
        keep_tokens = model.config.max_positions if options.long_texts == "truncate" else None
        with _timed(phases, "tokenize"):
            tokens, tokenizer_id = cached_tokenize(
                text_set, model.tokenizer, options.bos_policy, token_cache, keep_tokens,
                options.chat_template,
            )
            if options.pmi:
                # log p(y) of each continuation alone, tokenized as a plain text.
                marginal_tokens, _ = cached_tokenize(
                    TextSet(text_set.ids, text_set.texts, source=text_set.source), model.tokenizer,
                    options.bos_policy, token_cache, keep_tokens,
                )
        extra["token_cache"] = _token_cache_use(token_cache, cache_before)
        if several:
            elsewhere = distributed.merged_reason(distributed.gather(f"ready {reference}", None))
            if elsewhere is not None:
                raise _FailedElsewhere(elsewhere)
        stage = "score"
        scoring_started, programs_before = time.perf_counter(), compile_cache.counts()
        result = score_tokens(model, tokens, progress=progress, options=options)
        if options.pmi:
            result = pointwise_mutual_information(
                result, score_tokens(model, marginal_tokens, progress=progress, options=options)
            )
        stage = "check"
        phases["compile"], phases["score"] = result.stats["compile_seconds"], result.stats["seconds"]
        # Planning the batches and the scoring call's own setup: its time outside both.
        phases["plan"] = max(
            time.perf_counter() - scoring_started - phases["compile"] - phases["score"], 0.0
        )
        extra["compile_detail"] = _compile_detail(result.stats.get("compilations", 0), programs_before)
        _check_finite(reference, result, text_set)
        if options.logit_lens and not np.isfinite(result.layer_loglik).all():
            raise JaxmapError("non-finite log-likelihood in a logit-lens layer row")
    except Exception as error:  # noqa: BLE001 - one bad model must not stop a 1,000-model job
        if several and (stage == "score" or isinstance(error, distributed.DistributedError)):
            # The other processes may be waiting inside the work done together, or the
            # processes cannot meet: this stops every process (distributed.together).
            raise
        outcome = _failure(reference, error, phases)
        if several and stage == "prepare" and not isinstance(error, _FailedElsewhere):
            # The others wait to hear from this process before scoring: it failed here.
            outcome.reason = distributed.merged_reason(distributed.gather(f"ready {reference}", outcome.reason))
        say(f"jaxmap: {reference}: failed: {outcome.reason}")
        outcome.overhead = _overhead(phases, started, extra)
        return outcome
    meta = {
        "reference": reference,
        "key": checkpoint.canonical,
        "revision": model.checkpoint.revision,
        "source": model.checkpoint.source,
        "architecture": model.architecture,
        "dtype": options.dtype,
        "bos_policy": options.bos_policy,
        "long_texts": options.long_text_setting,
        **{name: options.store_settings[name] for name in ("chat_template", "values") if name in options.store_settings},
        "n_ctx": model.config.max_positions,
        "tokenizer": tokenizer_id,
        "jaxmap_version": __version__,
        "load_seconds": model.load_seconds,
        "phase_seconds": dict(phases),
        **result.stats,
    }
    # A store that cannot take the row (full disk, damaged) stops the job: later rows would
    # fail the same way. In a multi-host run the others stop with process 0.
    rows = [(reference, result.loglik, meta)]
    if options.logit_lens:
        layers = model.config.num_layers
        rows += [
            (
                layer_row_name(reference, layer),
                values,
                {
                    **meta, "key": layer_row_name(checkpoint.canonical, layer), "layer": layer,
                    "num_layers": layers, "parent_model": reference,
                    "parent_key": checkpoint.canonical,
                },
            )
            for layer, values in enumerate(result.layer_loglik)
        ]
    stop, committed_here = None, 0
    if writer is not None:
        committing = time.perf_counter()
        # A process stopping for another one's failure waits for the commit in progress.
        with distributed.committing():
            try:
                for name, values, row_meta in rows:
                    if row_meta["key"] not in committed:
                        try:
                            own = name == reference
                            writer.append(
                                name, values, result.ntokens, result.truncated, row_meta,
                                token_logprobs=result.token_logprobs if own else None,
                                **(
                                    {"is_greedy": result.is_greedy, "continuation_tokens": result.continuation_tokens}
                                    if own and result.is_greedy is not None else {}
                                ),
                            )
                            committed_here += 1
                        except RowExistsError:
                            pass  # another job on this store committed it while this one scored
            except StoreError as error:
                stop = error
        phases["commit"] = time.perf_counter() - committing
    if stop is not None:
        raise stop  # in a multi-host run the others stop with process 0 (distributed.together)
    committed_here = distributed.share_from_first(committed_here)
    stats = result.stats
    if progress:
        say(
            f"{reference}: {stats['tokens']} tokens in {stats['seconds']:.1f} s "
            f"({stats['tokens_per_second']:.0f} tok/s) + {stats['compile_seconds']:.1f} s "
            f"compiling, padding {100 * stats['padding_fraction']:.1f}%, "
            f"{stats['compilations']} new compilation(s), {stats['batching']}, "
            f"{int(result.truncated.sum())} truncated"
        )
    return ModelOutcome(
        reference, "scored" if committed_here else "skipped", "" if committed_here else BY_ANOTHER_JOB,
        tokens=stats["tokens"], seconds=stats["seconds"],
        tokens_per_second=stats["tokens_per_second"], phases=dict(phases),
        overhead=_overhead(phases, started, extra),
    )


# The parts of a model's wall time in the run summary, in order; "other" (added) is the rest.
OVERHEAD_PARTS = ("resolve", "validate", "load", "tokenize", "plan", "compile", "score", "commit")


def _overhead(phases: dict[str, float], started: float | None, extra: dict) -> dict:
    """Where one model's wall time went: ``wall`` (its resolve and validate, then its turn in
    the job from the moment the job turns to it until its outcome), ``parts`` (seconds per
    :data:`OVERHEAD_PARTS`, ``load`` being what the job waited for the model's download and load,
    and ``other`` the rest: the store's check for rows committed meanwhile, the checks, the row's
    metadata, progress lines), ``outside_scoring`` (``wall`` less ``score``) and the details
    in ``extra`` (load_detail, token_cache, compile_detail)."""
    if started is None:
        return {}
    turn = time.perf_counter() - started
    wall = phases.get("resolve", 0.0) + phases.get("validate", 0.0) + turn
    parts = {name: phases.get("wait" if name == "load" else name, 0.0) for name in OVERHEAD_PARTS}
    parts["other"] = max(wall - sum(parts.values()), 0.0)
    return {"wall": wall, "outside_scoring": max(wall - parts["score"], 0.0), "parts": parts, **extra}


def _load_detail(checkpoint: Checkpoint, seconds: float, phases: dict[str, float]) -> dict:
    """The model's load in the loader thread: ``read`` (tensor data from the files), ``layout``
    (converting to the decoder's layout and dtype), ``place`` (the rest: config, device put,
    tokenizer), and ``hidden``, the part of download and load that the previous model's
    scoring hid (what the job did not wait for)."""
    timing = checkpoint.load_timing()
    read, layout = timing.get("read", 0.0), timing.get("layout", 0.0)
    hidden = phases.get("download", 0.0) + seconds - phases.get("wait", 0.0)
    return {
        "seconds": seconds, "read": read, "layout": layout,
        "place": max(seconds - read - layout, 0.0), "hidden": max(hidden, 0.0),
    }


def _token_cache_files(token_cache: Path | None) -> dict[str, int] | None:
    """The token cache's files and their modification times (None: no cache)."""
    if token_cache is None:
        return None
    try:
        return {entry.name: entry.stat().st_mtime_ns for entry in os.scandir(token_cache) if entry.is_file()}
    except OSError:
        return {}


def _token_cache_use(token_cache: Path | None, before: dict[str, int] | None) -> str:
    """``"hit"`` (the tokens were read from the cache), ``"miss"`` (tokenized and written to
    it) or ``"off"`` (no cache: a process other than 0 of a multi-host job)."""
    if before is None:
        return "off"
    after = _token_cache_files(token_cache) or {}
    return "miss" if any(before.get(name) != stamp for name, stamp in after.items()) else "hit"


def _compile_detail(new_programs: int, before: dict[str, int]) -> dict:
    """Whether the model's scorers were compiled: ``new_programs`` (0 when the engine had them
    all in memory, from an earlier model of the shape), with the compilation cache the programs
    it ``loaded`` and ``compiled``, and ``hit``: ``"memory"``, ``"disk"`` (all loaded from the
    compilation cache), ``"partial"`` or ``"miss"``."""
    detail: dict = {"new_programs": new_programs}
    if compile_cache.directory() is not None:
        after = compile_cache.counts()
        detail["loaded"] = after["loaded"] - before["loaded"]
        detail["compiled"] = after["compiled"] - before["compiled"]
    if not new_programs:
        detail["hit"] = "memory"
    elif detail.get("loaded") and not detail.get("compiled"):
        detail["hit"] = "disk"
    else:
        detail["hit"] = "partial" if detail.get("loaded") else "miss"
    return detail


def _compact(writer: StoreWriter, say: Callable[[str], None]) -> None:
    try:
        writer.compact()
    except StoreError as error:
        say(f"jaxmap: rows kept in the journal, not folded into the matrix: {error}")


def score(
    models: Sequence[str] | str,
    texts: TextSet | str | Path | Sequence[str],
    out: str | Path,
    **options,
) -> Store:
    """Score every model on every text into the store ``out`` and return the store.

    ``models`` holds model references (local HF directories, hub ids ``org/name[@rev]``,
    ``.gguf`` files, packaged model names, or list files of references). Keyword options are
    those of :func:`score_job`. Raises :class:`~jaxmap.errors.ModelsFailedError` naming every
    failed model, after committing the others.
    """
    summary = score_job(models, texts, out, **options)
    if summary.failures:
        listed = "; ".join(f"{m}: {why}" for m, why in summary.failures.items())
        raise ModelsFailedError(f"{len(summary.failures)} model(s) failed: {listed}", summary.failures)
    return open_store(out)
