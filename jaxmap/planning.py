"""What a scoring job will cost, from model configs alone, and cost-balanced shards.

Two users:

* ``jaxmap score --shard I/N`` (:func:`plan_shards`): every shard process computes the same
  assignment of models to shards on its own, with no coordination, so the assignment depends
  only on the model list, the text set and the configs. Each model's cost is the FLOPs of
  scoring the text set (:func:`scoring_flops`), in exact integers so that every machine gets
  the same numbers; models go longest first to the least-loaded shard (LPT), ties broken by
  list position and then by shard number. ``by="index"`` keeps the older rule, every N-th model.
* ``jaxmap plan`` (:func:`plan_job`): per model its parameters, weight and activation memory,
  the smallest model axis that fits a device, FLOPs and time at a stated MFU; then device-hours,
  the makespan on the given devices and the shard plan those devices would run.

Nothing here reads weights or loads a tokenizer: a model's shape comes from its config through
the architecture's adapter (:func:`jaxmap.models.translate_config`), and a text's token count is
estimated as its UTF-8 bytes / 4 (:data:`BYTES_PER_TOKEN`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from .errors import JaxmapError
from .models import DTYPES, DecoderConfig, translate_config
from .models.layout import param_shapes
from .texts import TextSet, load_texts

__all__ = [
    "ASSUMED_MFU",
    "BYTES_PER_TOKEN",
    "DEVICE_KINDS",
    "DeviceKind",
    "JobPlan",
    "MEMORY_FRACTION",
    "ModelCost",
    "ModelPlan",
    "SHARD_RULES",
    "ShardPlan",
    "activation_bytes",
    "assign_shards",
    "distinct_references",
    "estimate_costs",
    "estimated_lengths",
    "measured_mfu",
    "model_config",
    "parameter_count",
    "parse_device_spec",
    "parse_devices",
    "plan_job",
    "plan_shards",
    "scoring_flops",
]

# Tokens per text are estimated from bytes without loading any tokenizer: tokenizing the text set
# once per distinct tokenizer of a 1,000-model list would take each shard minutes before it
# starts. English web text runs 3.5-4.5 bytes per token with the usual 32k-150k vocabularies.
BYTES_PER_TOKEN = 4
# MFU used when benchmarks/results has no measurement for the device kind and dtype.
ASSUMED_MFU = 0.4
# The share of a device's memory a model may fill: JAX preallocates 75% of a GPU's memory by
# default (XLA_PYTHON_CLIENT_MEM_FRACTION); on TPUs the rest is headroom for XLA's temporaries.
MEMORY_FRACTION = 0.75
SHARD_RULES = ("cost", "index")

_RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
# The throughput benchmark's jaxmap contender for each dtype (benchmarks/throughput.py).
_CONTENDERS = {"float32": "jaxmap-f32", "bfloat16": "jaxmap-bf16"}


@dataclass(frozen=True)
class DeviceKind:
    """One kind of accelerator: peak dense matmul FLOP/s per device and memory in bytes.

    ``flops`` is the peak for 16-bit inputs (bfloat16, float16); ``float32_flops`` the peak for
    float32 at full precision, which jaxmap's float32 scoring asks for (no TF32 on GPUs, six
    bfloat16 passes on TPUs); None where unknown.
    """

    name: str
    flops: float
    memory: int
    float32_flops: float | None = None
    note: str = ""

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for weights of ``dtype``."""
        if dtype != "float32":
            return self.flops
        if self.float32_flops is None:
            raise JaxmapError(
                f"device kind {self.name!r} has no float32 peak; give it one (--device-spec "
                f"{self.name}=...,fp32=FLOPS) or plan with --dtype bfloat16"
            )
        return self.float32_flops


# Public dense (no sparsity) peaks per device from the vendors' data sheets.
DEVICE_KINDS: dict[str, DeviceKind] = {
    kind.name: kind
    for kind in (
        DeviceKind("h100", 989e12, 80 * 10**9, 67e12, "NVIDIA H100 SXM 80 GB"),
        DeviceKind("h200", 989e12, 141 * 10**9, 67e12, "NVIDIA H200 SXM 141 GB"),
        DeviceKind("a100", 312e12, 80 * 10**9, 19.5e12, "NVIDIA A100 SXM 80 GB"),
        DeviceKind("tpu-v5e", 197e12, 16 * 10**9, 197e12 / 6, "Google TPU v5e (float32: bfloat16 peak / 6)"),
        DeviceKind("tpu-v5p", 459e12, 95 * 10**9, 459e12 / 6, "Google TPU v5p (float32: bfloat16 peak / 6)"),
        # Not a data sheet: the JAX matmul peaks measured on the 2-core machine of
        # benchmarks/results (throughput-cpu-2core-2026-12-03-after-late-normalization.json,
        # medians), the peak its MFU figures are fractions of; 24 GB of memory.
        DeviceKind("cpu", 97.1e9, 24 * 10**9, 135.5e9, "the 2-core benchmark machine (measured JAX matmul peaks)"),
    )
}


def _known_kinds(kinds: dict[str, DeviceKind]) -> str:
    return ", ".join(sorted(kinds))


def parse_devices(text: str, kinds: dict[str, DeviceKind] | None = None) -> tuple[int, DeviceKind]:
    """``"8xH100"`` → ``(8, DEVICE_KINDS["h100"])``; the kind's name in any case.

    Raises :class:`JaxmapError` in one line for another spelling or an unknown kind (listing
    the known ones).
    """
    kinds = DEVICE_KINDS if kinds is None else kinds
    match = re.fullmatch(r"\s*(\d+)\s*[x×*]\s*(\S+)\s*", text, re.IGNORECASE)
    if not match or int(match[1]) < 1:
        raise JaxmapError(f"--devices {text!r}: expected COUNTxKIND, e.g. 8xH100")
    name = match[2].lower()
    if name not in kinds:
        raise JaxmapError(
            f"--devices {text!r}: unknown device kind {match[2]!r}; known: {_known_kinds(kinds)} "
            "(add one with --device-spec)"
        )
    return int(match[1]), kinds[name]


_SI = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}


def _quantity(text: str, what: str, where: str) -> float:
    """``989e12``, ``989T``, ``80G`` or ``80GB``: a positive number with an optional SI suffix."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?\d+)?)\s*([KMGTP]?)B?\s*", str(text), re.IGNORECASE)
    try:
        value = float(match[1]) * _SI[match[2].upper()] if match else 0.0
    except ValueError:
        value = 0.0
    if not 0 < value < math.inf:
        raise JaxmapError(f"{where}: {what} {text!r} is not a positive number such as 989e12, 989T or 80G")
    return value


def _device_kind(name: str, fields: dict, where: str) -> DeviceKind:
    unknown = sorted(set(fields) - {"flops", "fp32", "memory", "note"})
    if unknown or not {"flops", "memory"} <= set(fields):
        raise JaxmapError(
            f"{where}: a device spec has flops= and memory= (and optionally fp32=, note=)"
            + (f"; unknown field(s) {', '.join(unknown)}" if unknown else "")
        )
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name.lower()):
        raise JaxmapError(f"{where}: device kind name {name!r} should be letters, digits, '.', '_' or '-'")
    return DeviceKind(
        name.lower(),
        _quantity(fields["flops"], "flops", where),
        int(_quantity(fields["memory"], "memory", where)),
        _quantity(fields["fp32"], "fp32", where) if "fp32" in fields else None,
        str(fields.get("note", "given with --device-spec")),
    )


def parse_device_spec(text: str) -> list[DeviceKind]:
    """Device kinds a person adds, as ``name=v6e,flops=918T,memory=32G[,fp32=...]`` or as the
    path of a JSON file mapping names to ``{"flops": ..., "memory": ..., "fp32": ...}`` (numbers,
    or strings such as ``"918T"``). ``flops`` is the 16-bit peak, ``fp32`` the float32 one."""
    path = Path(text).expanduser()
    if text.endswith(".json") or path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise JaxmapError(f"--device-spec {text}: cannot read a JSON object ({error})") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise JaxmapError(f"--device-spec {text}: expected a JSON object of name -> {{flops, memory, fp32}}")
        return [_device_kind(name, fields, f"--device-spec {text} ({name})") for name, fields in data.items()]
    fields = dict(part.partition("=")[::2] for part in text.split(",") if part.strip())
    fields = {key.strip().lower(): value.strip() for key, value in fields.items()}
    name = fields.pop("name", "")
    if not name:
        raise JaxmapError(
            f"--device-spec {text!r}: expected name=KIND,flops=FLOPS,memory=BYTES[,fp32=FLOPS] or a JSON file"
        )
    return [_device_kind(name, fields, f"--device-spec {text!r}")]


def measured_mfu(kind: str, dtype: str, results: str | Path | None = None) -> tuple[float, str] | None:
    """The MFU jaxmap measured on ``kind`` devices for ``dtype``, and the file it comes from.

    Read from the throughput benchmark's results (``benchmarks/results/throughput-*.json`` of
    the source checkout, or ``results``): the newest run on a machine named ``kind`` or
    ``kind-...`` with a jaxmap contender for ``dtype``; the median over its rounds of achieved
    FLOP/s ÷ peak. None when there is none.
    """
    folder = Path(results) if results is not None else _RESULTS
    contender = _CONTENDERS.get(dtype)
    found: list[tuple[str, float, str]] = []
    for path in sorted(folder.glob("throughput-*.json")) if contender and folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            machine = data["machine"]["name"]
            rounds = data["contenders"][contender]["rounds"]
            fractions = [float(r["fraction_of_peak"]) for r in rounds]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # another schema, or a run without this contender
        if fractions and (machine == kind or machine.startswith(kind + "-")):
            found.append((str(data.get("created", "")), float(np.median(fractions)), path.name))
    if not found:
        return None
    _, mfu, name = max(found)
    where = f"benchmarks/results/{name}" if results is None else str(folder / name)
    return mfu, f"{where} ({contender})"


# --- one model's shape and cost -------------------------------------------------------------


def model_config(reference: str, cache_dir: str | Path | None = None) -> tuple[str, DecoderConfig]:
    """A model's architecture and decoder config, read from its config alone (no weights).

    A local directory's (or an orbax step's) ``config.json``; a GGUF file's metadata; a hub id's
    config from the local hub cache, or downloaded with the tokenizer files as a job's validation
    does (:func:`jaxmap.checkpoints.resolve`).
    """
    from .checkpoints import read_config

    return translate_config(read_config(reference, cache_dir), reference)


def parameter_count(config: DecoderConfig) -> int:
    """The decoder's parameters as jaxmap holds them: embeddings, unembedding unless tied,
    learned positions, every layer's projections, experts, router and norms, as the params
    layout (:func:`jaxmap.models.layout.param_shapes`) sizes them. Biases are not in a config
    (jaxmap finds them in the weights) and are left out: well under 0.1% of a model."""
    shapes = param_shapes(config)
    return sum(math.prod(shape) for shape in jax.tree.leaves(shapes, is_leaf=lambda leaf: isinstance(leaf, tuple)))


def estimated_lengths(texts: TextSet) -> np.ndarray:
    """Each text's estimated token count: its UTF-8 bytes (with its context's, which the model
    reads too) / :data:`BYTES_PER_TOKEN`, rounded up."""
    strings = [c + t for c, t in zip(texts.contexts, texts.texts)] if texts.contexts else texts.texts
    sizes = np.array([len(text.encode("utf-8")) for text in strings], np.int64)
    return -(-sizes // BYTES_PER_TOKEN)


def scoring_flops(config: DecoderConfig, lengths: np.ndarray) -> tuple[int, int]:
    """``(scored positions, FLOPs)`` of scoring texts of ``lengths`` tokens, each cut to the
    model's context: every position passes every matmul weight (the engine's
    :func:`~jaxmap.engine.position_flops`: 2 × matmul parameters, the unembedding included,
    experts as dispatched) and attends over its whole text (``score_flops`` per query-key pair,
    the full square as the benchmarks count it). Padding is not counted. Exact integers."""
    from .engine import position_flops, score_flops

    positions = np.minimum(np.asarray(lengths, np.int64), config.max_positions - 1)
    scored = int(positions.sum())
    return scored, int(position_flops(config)) * scored + int(score_flops(config)) * int((positions * positions).sum())


@dataclass(frozen=True)
class ModelCost:
    """One model's estimated cost. ``problem`` says why its config could not be read; its
    ``flops`` are then the median of the others'."""

    reference: str
    architecture: str | None
    parameters: int | None
    tokens: int
    flops: int
    problem: str = ""
    config: DecoderConfig | None = field(default=None, compare=False, repr=False)


def estimate_costs(
    references: Sequence[str], texts: TextSet, cache_dir: str | Path | None = None
) -> list[ModelCost]:
    """The cost of every reference on ``texts`` (:func:`scoring_flops`), from configs only.

    A model whose config cannot be read costs the median of the others (the lower median, an
    integer; 1 FLOP when none can be read), so that it neither hogs a shard nor is treated as
    free; its ``problem`` says why.
    """
    lengths = estimated_lengths(texts)
    costs: list[ModelCost] = []
    for reference in references:
        try:
            architecture, config = model_config(reference, cache_dir)
        except Exception as error:  # noqa: BLE001 - the model's own validation reports it later
            # Whatever keeps a config from being costed must not stop the job before it starts.
            reason = str(error) if isinstance(error, JaxmapError) else f"{type(error).__name__}: {error}"
            costs.append(ModelCost(reference, None, None, 0, 0, reason.removeprefix(f"{reference}: ")))
            continue
        tokens, flops = scoring_flops(config, lengths)
        costs.append(ModelCost(reference, architecture, parameter_count(config), tokens, flops, config=config))
    known = sorted(cost.flops for cost in costs if not cost.problem)
    median = known[(len(known) - 1) // 2] if known else 1
    return [
        ModelCost(c.reference, None, None, 0, median, c.problem) if c.problem else c for c in costs
    ]


# --- shards --------------------------------------------------------------------------------


def distinct_references(references: Sequence[str]) -> list[str]:
    """``references`` with later spellings of one model on disk dropped (``m0``, ``./m0/``, a
    symbolic link to it: a resolved path, the canonical key a job would give it), so that a
    model spelled two ways never lands on two shards. Hub ids are kept as written: every shard
    must cut the list alike, offline, and a hub branch may move between the starts of two
    shards."""
    distinct: dict[str, str] = {}
    for reference in references:
        path = Path(reference).expanduser()
        distinct.setdefault(str(path.resolve()) if path.exists() else reference, reference)
    return list(distinct.values())


def assign_shards(costs: Sequence[int], count: int) -> list[list[int]]:
    """Positions of ``costs`` per shard: longest first to the least-loaded shard (LPT), ties
    broken by list position, then by the lower shard number; each shard's positions ascending.
    Deterministic, so every shard process computes the same assignment."""
    shards: list[list[int]] = [[] for _ in range(count)]
    loads = [(0, shard) for shard in range(count)]
    for position in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, shard = heapq.heappop(loads)
        shards[shard].append(position)
        heapq.heappush(loads, (load + costs[position], shard))
    return [sorted(positions) for positions in shards]


@dataclass(frozen=True)
class ShardPlan:
    """Which models each of ``count`` shards scores. ``costs`` (by cost only) are per model of
    ``references``, the list after :func:`distinct_references`."""

    references: list[str]
    shards: list[list[int]]
    by: str
    costs: list[ModelCost] | None = None

    def models(self, index: int) -> list[str]:
        """The references shard ``index`` scores, in list order."""
        return [self.references[i] for i in self.shards[index]]

    def share(self, index: int) -> float:
        """Shard ``index``'s share of the estimated cost (by cost only)."""
        total = sum(c.flops for c in self.costs or ())
        return sum(self.costs[i].flops for i in self.shards[index]) / total if total else 0.0

    @property
    def fingerprint(self) -> str:
        """A short hash of the assignment: every shard of one job prints the same."""
        listed = json.dumps([self.models(i) for i in range(len(self.shards))])
        return hashlib.sha256(listed.encode()).hexdigest()[:12]

    def lines(self, index: int) -> list[str]:
        """What shard ``index`` says about its part of the plan."""
        count = len(self.shards)
        head = f"shard {index}/{count}: {_models(len(self.shards[index]))}"
        if self.by == "index":
            positions = f"positions {index}, {index + count}, {index + 2 * count}, ... of the list"
            return [f"{head}, {positions}; plan {self.fingerprint}"]
        out = [
            f"{head}, {100 * self.share(index):.1f}% of the estimated cost (ideal {100 / count:.1f}%); "
            f"plan {self.fingerprint} (every shard of this job must print the same)"
        ]
        unread = [c for c in self.costs if c.problem]
        if unread:
            shown = ", ".join(c.reference for c in unread[:3]) + (" ..." if len(unread) > 3 else "")
            out.append(f"jaxmap: {len(unread)} model(s) costed at the median, their config unreadable: {shown}")
        return out


def plan_shards(
    references: Sequence[str],
    count: int,
    texts: TextSet | None = None,
    by: str = "cost",
    cache_dir: str | Path | None = None,
) -> ShardPlan:
    """The assignment of ``references`` (spellings of one model on disk counted once) to
    ``count`` shards: by estimated cost on ``texts`` (:func:`estimate_costs`,
    :func:`assign_shards`), or by ``"index"``, models I, I+N, I+2N, … to shard I."""
    if by not in SHARD_RULES:
        raise JaxmapError(f"unknown shard rule {by!r}; choose one of {', '.join(SHARD_RULES)}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise JaxmapError(f"a shard count must be a positive integer, got {count!r}")
    references = distinct_references(references)
    if by == "index":
        return ShardPlan(references, [list(range(i, len(references), count)) for i in range(count)], by)
    if texts is None:
        raise JaxmapError("shards by cost need the text set (texts=)")
    costs = estimate_costs(references, texts, cache_dir)
    return ShardPlan(references, assign_shards([c.flops for c in costs], count), by, costs)


# --- the job plan --------------------------------------------------------------------------


def activation_bytes(config: DecoderConfig, batch_tokens: int, model_axis: int = 1) -> int:
    """Peak activation memory per device while scoring batches of ``batch_tokens`` positions:
    per position and layer (the layers run one after another), float32 values for the residual
    stream and its normed copy, q/k/v and the attention output, the MLP's gate, up and
    activation (every expert's, as jaxmap dispatches densely), one key block of attention
    scores per head (the blockwise path's block at the model's context), and one vocabulary tile
    of logits; all but the stream split over ``model_axis``."""
    from .kernels.fused_logprob import DEFAULT_TILE
    from .models.attention import block_size

    width, head_dim = config.hidden_size, config.head_dim
    heads = config.num_heads + config.num_kv_heads
    mlp = config.intermediate_size if not config.num_experts or config.shared_expert else 0
    mlp += config.num_experts * config.expert_intermediate_size
    split = (
        2 * heads * head_dim + 3 * mlp + config.num_heads * block_size(config.max_positions)
        + min(DEFAULT_TILE, config.vocab_size)
    )
    return 4 * batch_tokens * (2 * width + -(-split // model_axis))


@dataclass(frozen=True)
class ModelPlan:
    """One model of a :class:`JobPlan`: ``weight_bytes`` in the job's dtype (all of them),
    ``activation_bytes`` and ``device_bytes`` per device on ``model_axis`` devices (None: it
    does not fit on every device of the job), ``seconds`` of scoring on that many devices."""

    reference: str
    architecture: str | None
    parameters: int | None
    tokens: int
    flops: int
    weight_bytes: int | None
    activation_bytes: int | None
    model_axis: int | None
    device_bytes: int | None
    seconds: float
    problem: str = ""


@dataclass
class JobPlan:
    """What a job costs on ``devices`` devices of ``kind`` (:func:`plan_job`)."""

    models: list[ModelPlan]
    kind: DeviceKind
    devices: int
    dtype: str
    batch_tokens: int
    mfu: float
    mfu_source: str
    texts: int
    text_bytes: int
    text_tokens: int  # estimated, before any model's context cuts a text
    group: int  # devices per shard: the largest model axis any model needs
    shards: ShardPlan
    assumptions: list[str]

    @property
    def device_hours(self) -> float:
        """Device-hours of scoring, every model on its own at the stated MFU."""
        return sum(m.flops for m in self.models) / (self.kind.peak(self.dtype) * self.mfu) / 3600

    def shard_hours(self, index: int) -> float:
        """Hours shard ``index`` scores for, on its ``group`` devices."""
        flops = sum(self.models[i].flops for i in self.shards.shards[index])
        return flops / (self.group * self.kind.peak(self.dtype) * self.mfu) / 3600

    @property
    def makespan_hours(self) -> float:
        """Hours until the last shard finishes."""
        return max(self.shard_hours(i) for i in range(len(self.shards.shards)))

    def to_json(self) -> dict:
        """The plan as JSON-ready data."""
        return {
            "devices": {"count": self.devices, **asdict(self.kind)},
            "dtype": self.dtype,
            "batch_tokens": self.batch_tokens,
            "mfu": self.mfu,
            "mfu_source": self.mfu_source,
            "memory_fraction": MEMORY_FRACTION,
            "texts": {
                "count": self.texts, "bytes": self.text_bytes, "tokens": self.text_tokens,
                "bytes_per_token": BYTES_PER_TOKEN,
            },
            "models": [asdict(m) for m in self.models],
            "totals": {
                "models": len(self.models),
                "flops": sum(m.flops for m in self.models),
                "device_hours": self.device_hours,
                "makespan_hours": self.makespan_hours,
                "weight_bytes": sum(m.weight_bytes or 0 for m in self.models),
            },
            "shards": {
                "count": len(self.shards.shards),
                "devices_per_shard": self.group,
                "fingerprint": self.shards.fingerprint,
                "plan": [
                    {
                        "index": i, "share": self.shards.share(i), "hours": self.shard_hours(i),
                        "models": self.shards.models(i),
                    }
                    for i in range(len(self.shards.shards))
                ],
            },
            "assumptions": self.assumptions,
        }

    def lines(self) -> list[str]:
        """The plan as a table and totals for people."""
        width = max([len("model"), *(len(m.reference) for m in self.models)])
        out = [
            f"{'model':<{width}}  {'params':>7}  {'tokens':>7}  {'weights':>9}  {'activations':>11}  "
            f"{'axis':>4}  {'per device':>10}  {'PFLOP':>9}  {'time':>9}"
        ]
        for m in self.models:
            if m.problem:
                out.append(f"{m.reference:<{width}}  config unreadable ({m.problem}); costed at the median")
                continue
            out.append(
                f"{m.reference:<{width}}  {_count(m.parameters):>7}  {_count(m.tokens):>7}  "
                f"{_bytes(m.weight_bytes):>9}  {_bytes(m.activation_bytes):>11}  "
                f"{m.model_axis or '-':>4}  {_bytes(m.device_bytes) if m.model_axis else 'no fit':>10}  "
                f"{m.flops / 1e15:>9.3g}  {_duration(m.seconds) if m.model_axis else '-':>9}"
            )
        count = len(self.shards.shards)
        peak = self.kind.peak(self.dtype)
        out += [
            "",
            f"devices       {self.devices} x {self.kind.name} ({self.kind.note}): {peak / 1e12:.4g} TFLOP/s "
            f"{self.dtype} peak, {_bytes(self.kind.memory)} each",
            f"texts         {self.texts} ({self.text_bytes} bytes, about {self.text_tokens} tokens)",
            f"total         {_models(len(self.models))}, {sum(m.flops for m in self.models) / 1e18:.4g} EFLOP, "
            f"{self.device_hours:.4g} device-hours at MFU {self.mfu:.2f}, "
            f"{_bytes(sum(m.weight_bytes or 0 for m in self.models))} of weights to load",
            f"makespan      {self.makespan_hours:.4g} h on {count} shard(s) of {self.group} device(s) "
            f"(plan {self.shards.fingerprint}: jaxmap score ... --shard I/{count}"
            + (f" --mesh data=1,model={self.group}" if self.group > 1 else "") + ")",
            "",
        ]
        for i in range(count):
            out.append(
                f"shard {i}/{count}: {_models(len(self.shards.shards[i]))}, {100 * self.shards.share(i):.1f}% "
                f"of the estimated cost (ideal {100 / count:.1f}%), {self.shard_hours(i):.3g} h: "
                + ", ".join(self.shards.models(i))
            )
        out += ["", "assumptions:"] + [f"  - {a}" for a in self.assumptions]
        return out


def _models(count: int) -> str:
    return f"{count} model" + ("" if count == 1 else "s")


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value} B"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def _axes(devices: int) -> list[int]:
    """Model-axis sizes a job on ``devices`` devices can use: the divisors of the count."""
    return [size for size in range(1, devices + 1) if devices % size == 0]


def plan_job(
    models: Sequence[str] | str,
    texts: TextSet | str | Path,
    devices: str = "1xh100",
    *,
    dtype: str = "float32",
    batch_tokens: int | None = None,
    mfu: float | None = None,
    device_specs: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    results: str | Path | None = None,
) -> JobPlan:
    """What scoring ``models`` on ``texts`` costs on ``devices`` (``"8xH100"``), from configs
    only; see the module docstring.

    ``batch_tokens`` defaults to the engine's for the kind (CPU or accelerator); ``mfu`` to the
    measured figure for the kind and dtype in benchmarks/results (``results``), else
    :data:`ASSUMED_MFU`. ``device_specs`` add device kinds (:func:`parse_device_spec`). Each
    model gets the smallest model axis (a divisor of the device count) on which its weights
    and activations fit :data:`MEMORY_FRACTION` of a device; every shard gets as many devices
    as the largest axis, and the shards are those ``jaxmap score --shard I/N`` computes.
    """
    from .checkpoints import expand_references
    from .engine import ACCELERATOR_BATCH_TOKENS, CPU_BATCH_TOKENS

    if dtype not in DTYPES:
        raise JaxmapError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if mfu is not None and not 0 < mfu <= 1:
        raise JaxmapError(f"MFU {mfu!r} must be in (0, 1]")
    kinds = dict(DEVICE_KINDS)
    for spec in device_specs:
        kinds.update({kind.name: kind for kind in parse_device_spec(spec)})
    count, kind = parse_devices(devices, kinds)
    peak = kind.peak(dtype)
    batch_tokens = batch_tokens or (CPU_BATCH_TOKENS if kind.name == "cpu" else ACCELERATOR_BATCH_TOKENS)
    text_set = texts if isinstance(texts, TextSet) else load_texts(texts)
    references = distinct_references(expand_references([models] if isinstance(models, str) else models))
    if not references:
        raise JaxmapError("no models to plan")
    costs = estimate_costs(references, text_set, cache_dir)

    assumptions = [
        f"tokens per text: UTF-8 bytes / {BYTES_PER_TOKEN}, rounded up, cut at each model's context "
        "(no tokenizer is loaded); FLOPs 2 x matmul parameters per token plus attention over each text, "
        "padding not counted",
    ]
    if mfu is not None:
        source = "given with --mfu"
    else:
        measured = measured_mfu(kind.name, dtype, results)
        if measured is not None:
            mfu, source = measured[0], f"measured, {measured[1]}"
        else:
            mfu, source = ASSUMED_MFU, f"assumed: benchmarks/results has no {kind.name} {dtype} measurement"
    assumptions.append(f"MFU {mfu:.2f} ({source})")
    assumptions.append(
        f"memory: weights in {dtype} split evenly over the model axis, float32 activations at "
        f"{batch_tokens} tokens per batch; a model may fill {MEMORY_FRACTION:.0%} of a device"
    )

    usable = MEMORY_FRACTION * kind.memory
    planned: list[ModelPlan] = []
    for cost in costs:
        if cost.problem:
            planned.append(
                ModelPlan(cost.reference, None, None, 0, cost.flops, None, None, None, None, 0.0, cost.problem)
            )
            continue
        weights = cost.parameters * np.dtype(DTYPES[dtype]).itemsize
        axis = next(
            (a for a in _axes(count) if -(-weights // a) + activation_bytes(cost.config, batch_tokens, a) <= usable),
            None,
        )
        activations = activation_bytes(cost.config, batch_tokens, axis or count)
        planned.append(ModelPlan(
            cost.reference, cost.architecture, cost.parameters, cost.tokens, cost.flops, weights,
            activations, axis, -(-weights // axis) + activations if axis else None,
            cost.flops / (peak * mfu * axis) if axis else 0.0,
        ))
    group = max([m.model_axis for m in planned if m.model_axis] or [1])
    shards = ShardPlan(references, assign_shards([c.flops for c in costs], count // group), "cost", costs)
    assumptions.append(
        f"{count // group} shard(s) of {group} device(s), each device as fast as alone (MFU the same "
        "whatever the mesh); loading, downloading and compiling not counted"
    )
    unread = [m.reference for m in planned if m.problem]
    if unread:
        assumptions.append(f"{len(unread)} model(s) with unreadable configs costed at the median: {', '.join(unread)}")
    misfits = [m.reference for m in planned if not m.problem and not m.model_axis]
    if misfits:
        assumptions.append(
            f"{len(misfits)} model(s) do not fit on {count} {kind.name} device(s) and would fail: "
            + ", ".join(misfits)
        )
    return JobPlan(
        planned, kind, count, dtype, batch_tokens, mfu, source, len(text_set),
        sum(len(t.encode("utf-8")) for t in text_set.texts), int(estimated_lengths(text_set).sum()),
        group, shards, assumptions,
    )
