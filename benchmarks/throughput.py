"""Throughput of jaxmap against the usual ways of scoring texts, interleaved in one run.

One command measures, on the same model and texts, in rounds (this machine's speed drifts by up
to 2x between runs, so only numbers taken side by side are compared):

* the matmul peak (JAX float32, JAX bfloat16 inputs with float32 accumulation; torch for
  reference), once per round;
* jaxmap's ``score`` in float32 and bfloat16: tokens/s, achieved FLOP/s and its share of the
  peak;
* the 1,000-model paper's loop (batch 1, one host sync per token) in transformers;
* a careful batched transformers loop in float32 and bfloat16;
* lm-evaluation-harness's ``loglikelihood_rolling`` when ``lm_eval`` is installed.

Each contender is reported twice more: end to end (what scoring the texts from the model
directory costs: jaxmap's whole ``jaxmap.score`` call, load, tokenization and store included; a
transformers loop's pass plus its one-time tokenizer and model loads) and its scoring alone
(jaxmap's scoring loop; a transformers loop's forward passes). The results file names the CPU
and its matrix features (AMX, AVX-512 BF16: ``machine.cpu_matrix_features``).

Every contender runs once untimed first (compilation, kernel set-up); its first timed pass is
checked against the float32 batched transformers loop on exactly the tokens it scores. The headline is the median
over rounds of the per-round ratio jaxmap tokens/s ÷ contender tokens/s. Results go to
``benchmarks/results/throughput-<machine>-<date>[-tag].json`` and ``.md``. See
benchmarks/README.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from throughput_contenders import (
    Contender,
    JaxmapScore,
    LmEvalRolling,
    PaperLoop,
    RunOutput,
    TorchModels,
    TransformersBatched,
    batched_logliks,
)
from throughput_workload import (
    FLOP_FORMULA,
    load_bench_texts,
    describe_matrix_features,
    machine_info,
    machine_name,
    matmul_peak,
    resolve_model,
    shape_of,
    stratified_subset,
)

SCHEMA = "jaxmap-throughput/1"
CONTENDERS = (
    "jaxmap-f32",
    "jaxmap-bf16",
    "jaxmap-f32-buckets",
    "jaxmap-bf16-buckets",
    "jaxmap-f32-pallas",
    "jaxmap-bf16-pallas",
    "hf-batched-f32",
    "hf-batched-bf16",
    "paper-loop-f32",
    "paper-loop-bf16",
    "lm-eval-f32",
)
# The Pallas kernels run in interpret mode on CPU (far too slow to race), and the paper ran its
# loop in 16 bits only on GPUs: those contenders are asked for by name.
DEFAULT_CONTENDERS = tuple(
    name for name in CONTENDERS if not name.endswith("-pallas") and name != "paper-loop-bf16"
)
REFERENCE = "hf-batched-f32"
# Per-text agreement with the float32 reference. float32 engines differ only by summation
# order (~1e-3 nats per text); bfloat16 weights move each token's log-probability by ~1e-2
# nats, which adds up over hundreds of tokens (~0.2-0.4% of ℓ measured on SmolLM2), so
# bfloat16 is held to a relative bound instead.
TOLERANCE_FLOAT32_NATS = 1e-2
TOLERANCE_BFLOAT16_RELATIVE = 1e-2
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        help="any jaxmap model reference: HF directory, .gguf, packaged name, hub id "
        "(default: the packaged SmolLM2-135M-Instruct, else a random model of its shape)",
    )
    parser.add_argument("--texts", help="JSONL text set (default: Python standard-library chunks)")
    parser.add_argument(
        "--texts-count", type=int, default=64, help="use the first N texts (0: all of --texts)"
    )
    parser.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)} (default: %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument(
        "--paper-texts",
        type=int,
        default=16,
        help="texts for the (slow) paper loop, spread evenly over the length distribution "
        "(0: all)",
    )
    parser.add_argument("--batch-tokens", type=int, default=None, help="jaxmap's batch_tokens (default: the engine's)")
    parser.add_argument(
        "--hf-batch-tokens", type=int, default=4096, help="padded tokens per transformers batch"
    )
    parser.add_argument("--lm-eval-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument(
        "--torch-device", default="auto", choices=["auto", "cpu", "cuda"],
        help="where the torch contenders run: auto is cuda when JAX runs on a GPU and torch "
        "sees one, else cpu (default: %(default)s)",
    )
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--matmul-repeats", type=int, default=3)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, time jaxmap's stages (see throughput_profile.py)",
    )
    parser.add_argument("--tag", help="suffix for the result file names, e.g. 'smoke'")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.contenders = [name.strip() for name in args.contenders.split(",") if name.strip()]
    unknown = sorted(set(args.contenders) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown contender(s) {unknown}; choose from {', '.join(CONTENDERS)}")
    args.torch_device = torch_device(args.torch_device)
    return args


def torch_device(setting: str) -> str:
    """``cpu`` or ``cuda`` for the torch contenders (see ``--torch-device``)."""
    import jax
    import torch

    if setting == "auto":
        return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise SystemExit("throughput.py: --torch-device cuda, but torch sees no CUDA device")
    return setting


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_contenders(
    args: argparse.Namespace, texts, directory: Path, models: TorchModels, paper_indices
) -> tuple[list[Contender], dict[str, str]]:
    """The selected contenders, in run order, and the ones skipped with the reason."""
    built: list[Contender] = []
    skipped: dict[str, str] = {}
    for name in args.contenders:
        dtype = "bfloat16" if "bf16" in name else "float32"
        if name.startswith("jaxmap"):
            packing = "buckets" if "-buckets" in name else "auto"
            built.append(
                JaxmapScore(texts, directory, dtype, args.batch_tokens, packing, "-pallas" in name)
            )
        elif name.startswith("hf-batched"):
            built.append(TransformersBatched(texts, models, dtype, args.hf_batch_tokens))
        elif name.startswith("paper-loop"):
            built.append(PaperLoop(texts, models, paper_indices, dtype))
        elif name == "lm-eval-f32":
            try:
                built.append(LmEvalRolling(texts, models, args.lm_eval_batch_size))
            except ImportError as error:
                skipped[name] = f"lm_eval is not importable ({error}); pip install lm-eval==0.4.13"
    return built, skipped


def agreement(contender: Contender, output: RunOutput, reference: RunOutput) -> dict:
    """How far a contender's per-text log-likelihoods are from the reference's."""
    expected = reference.loglik
    difference = np.abs(output.loglik - expected)
    relative = difference / np.maximum(np.abs(expected), 1e-9)
    if contender.dtype == "float32":
        tolerance = {"max_abs_nats": TOLERANCE_FLOAT32_NATS}
        ok = bool(difference.max() <= TOLERANCE_FLOAT32_NATS)
    else:
        tolerance = {"max_relative": TOLERANCE_BFLOAT16_RELATIVE}
        ok = bool(relative.max() <= TOLERANCE_BFLOAT16_RELATIVE)
    tokens_match = bool(np.array_equal(output.ntokens, reference.ntokens))
    return {
        "reference": f"{REFERENCE} (float32 transformers, same token sequences)",
        "max_abs_diff_nats": float(difference.max()),
        "mean_abs_diff_nats": float(difference.mean()),
        "max_relative_diff": float(relative.max()),
        "max_abs_diff_nats_per_token": float((difference / np.maximum(output.ntokens, 1)).max()),
        "tolerance": tolerance,
        "token_counts_match": tokens_match,
        "ok": ok and tokens_match,
    }


def check_agreement(
    contenders: list[Contender],
    runs: dict[str, list[RunOutput]],
    models: TorchModels,
    paper_ids: list[list[int]],
    check_indices: np.ndarray,
    args: argparse.Namespace,
    notes: list[str],
) -> dict[str, dict]:
    """:func:`agreement` of every contender's first timed pass, against the reference run on
    the token sequences that contender scores.

    The paper-policy reference is the hf-batched-f32 contender's own first pass when it ran,
    else a separate pass. lm-eval scores other sequences, so it gets its own reference pass,
    on the paper loop's text subset to save time.
    """
    reference_model = models.model("float32")
    if REFERENCE in runs:
        paper_reference = runs[REFERENCE][0]
    else:
        paper_reference = RunOutput(
            *batched_logliks(reference_model, paper_ids, args.hf_batch_tokens)[:2], 0.0
        )
    agreements = {}
    for contender in contenders:
        output = runs[contender.name][0]
        if contender.policy == "lm-eval":
            sequences = contender.scored_sequences([contender.texts[i] for i in check_indices])
            reference = RunOutput(
                *batched_logliks(reference_model, sequences, args.hf_batch_tokens)[:2], 0.0
            )
            output = RunOutput(output.loglik[check_indices], output.ntokens[check_indices], 0.0)
            if max(len(s) for s in sequences) > models.max_length + 1:
                notes.append(
                    "lm-eval used several rolling windows for some texts; its agreement check "
                    "against one full-length forward pass is approximate there"
                )
        else:
            reference = RunOutput(
                paper_reference.loglik[contender.indices],
                paper_reference.ntokens[contender.indices],
                0.0,
            )
        agreements[contender.name] = agreement(contender, output, reference)
        if contender.policy == "lm-eval":
            agreements[contender.name]["texts_checked"] = len(check_indices)
        record = agreements[contender.name]
        log(f"  {contender.name}: max |Δℓ| {record['max_abs_diff_nats']:.2e}, ok={record['ok']}")
    return agreements


def summarize(
    contender: Contender, runs: list[RunOutput], peaks: list[dict], flops: int
) -> list[dict]:
    """Per-round records: seconds, tokens/s, FLOP/s and the share of that round's peak."""
    peak_key = "jax_float32" if contender.dtype == "float32" else "jax_bfloat16"
    records = []
    for run, peak in zip(runs, peaks):
        tokens = int(run.ntokens.sum())
        records.append(
            {
                "seconds": run.seconds,
                "tokens_per_second": tokens / run.seconds,
                "gflops_per_second": flops / run.seconds / 1e9,
                "fraction_of_peak": flops / run.seconds / 1e9 / peak[peak_key],
                **run.extra,
            }
        )
        for figure in ("end_to_end", "scoring"):
            seconds = run.extra.get(f"{figure}_seconds")
            if seconds:
                records[-1][f"{figure}_tokens_per_second"] = tokens / seconds
    return records


def median_of(records: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in records]))


def ratios(results: dict[str, dict]) -> dict[str, dict]:
    """Median over rounds of jaxmap tokens/s ÷ contender tokens/s, for each jaxmap variant."""
    out: dict[str, dict] = {}
    for mine, record in results.items():
        if not mine.startswith("jaxmap"):
            continue
        out[mine] = {}
        for other, theirs in results.items():
            if other.startswith("jaxmap"):
                continue
            per_round = [
                a["tokens_per_second"] / b["tokens_per_second"]
                for a, b in zip(record["rounds"], theirs["rounds"])
            ]
            out[mine][other] = {"median": float(np.median(per_round)), "per_round": per_round}
    return out


def _torch_peak(peak: dict, name: str) -> str:
    """A torch peak cell, with the size it was measured at where it had to shrink."""
    size = peak.get(f"{name}_size")
    return f"{peak[name]:.0f}" + (f" (at {size}²)" if size else "")


def end_to_end_table(report: dict) -> list[str]:
    """Each contender end to end and its scoring alone: medians over rounds."""
    lines = [
        "End to end vs scoring alone (medians over rounds; end to end: jaxmap's whole "
        "`jaxmap.score` call with its load, tokenization and store; a transformers loop's pass "
        "plus its one-time tokenizer and model loads. Scoring alone: jaxmap's scoring loop; "
        "a transformers loop's forward passes; lm-eval's call, which tokenizes inside):",
        "",
        "| contender | end to end (s) | end to end tok/s | scoring alone (s) | scoring tok/s "
        "| outside scoring (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, record in report["contenders"].items():
        if "median_end_to_end_seconds" not in record or "median_scoring_seconds" not in record:
            lines.append(f"| {name} | — | — | — | — | — |")
            continue
        whole, alone = record["median_end_to_end_seconds"], record["median_scoring_seconds"]
        lines.append(
            f"| {name} | {whole:.2f} | {record['median_end_to_end_tokens_per_second']:.0f} | "
            f"{alone:.2f} | {record['median_scoring_tokens_per_second']:.0f} | {whole - alone:.2f} |"
        )
    return lines


def markdown(report: dict) -> str:
    """The report as a markdown page: setup, headline table, peak table, profile."""
    lines = [
        f"# Throughput: jaxmap vs transformers loops — {report['machine']['name']}, "
        f"{report['date']}" + (f" ({report['tag']})" if report["tag"] else ""),
        "",
        f"`{report['command']}`",
        "",
        f"* Machine: {report['machine']['cpu_model']}, {report['machine']['cpu_count']} cores "
        f"({', '.join(report['machine']['cpu_flags'])}); load average at start / end "
        f"{report['load_average']['start']} / {report['load_average']['end']}; JAX on "
        f"{', '.join(sorted(set(report['machine']['jax_devices'])))}, torch on "
        f"{report['settings']['torch_device']}.",
        "* CPU matrix features: "
        + (
            describe_matrix_features(report["machine"]["cpu_matrix_features"])
            if "cpu_matrix_features" in report["machine"] else "not recorded"
        )
        + ".",
        f"* Model: {report['model']['note']}; "
        f"{report['model']['shape']['matmul_weights'] / 1e6:.1f}M matmul weights (unembedding "
        "included).",
        f"* Texts: {report['texts']['count']} ({report['texts']['source']}), "
        f"{report['texts']['tokens_scored']} scored tokens (paper policy), "
        f"{report['texts']['length_tokens']['min']}–{report['texts']['length_tokens']['max']} "
        f"tokens per text (median {report['texts']['length_tokens']['median']:.0f}).",
        f"* {report['settings']['rounds']} interleaved round(s) after one untimed warm-up pass "
        "per contender; medians over rounds; speed-up = median of per-round ratios of "
        "tokens/s.",
        f"* FLOPs: {report['flops']['formula']}",
        "",
        "| contender | dtype | texts | tokens | warm-up (s) | compile (s) | time (s) | tokens/s "
        "| GFLOP/s | % of peak | jaxmap-f32 speed-up | jaxmap-bf16 speed-up "
        "| max \\|Δℓ\\| (nats) | agrees |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    speedups = report["ratios"]
    for name, record in report["contenders"].items():
        cells = [
            name,
            record["dtype"],
            str(record["texts"]),
            str(record["tokens"]),
            f"{record['warmup_seconds']:.1f} ({record['warmup_texts']} texts)",
            f"{record['warmup_extra']['compile_seconds']:.1f}"
            if "compile_seconds" in record["warmup_extra"]
            else "—",
            f"{record['median_seconds']:.1f}",
            f"{record['median_tokens_per_second']:.0f}",
            f"{record['median_gflops_per_second']:.1f}",
            f"{100 * record['median_fraction_of_peak']:.0f}%",
        ]
        for mine in ("jaxmap-f32", "jaxmap-bf16"):
            ratio = speedups.get(mine, {}).get(name)
            cells.append(f"{ratio['median']:.2f}×" if ratio else "—")
        agree = record["agreement"]
        cells += [f"{agree['max_abs_diff_nats']:.2e}", "yes" if agree["ok"] else "**NO**"]
        lines.append("| " + " | ".join(cells) + " |")
    for name, reason in report["skipped"].items():
        lines.append(f"| {name} | skipped: {reason} |" + " |" * 12)
    lines += [""] + end_to_end_table(report)
    lines += [
        "",
        "Warm-up: one untimed pass before the rounds (jaxmap: all texts, compiling every batch "
        "shape; torch contenders: the first texts, to set up kernels). Time, tokens/s, GFLOP/s: "
        "medians over the rounds. % of peak: achieved FLOP/s ÷ the same round's JAX matmul peak "
        "of the contender's dtype (float32, or bfloat16 inputs with float32 accumulation). "
        "Speed-up: median over rounds of jaxmap tokens/s ÷ this contender's tokens/s. "
        "max |Δℓ|: largest per-text difference from the float32 batched transformers loop on "
        "the same token sequences.",
        "",
        f"Matmul peak, GFLOP/s ({report['peak']['size']}² × {report['peak']['size']}², best of "
        f"{report['peak']['repeats']}):",
        "",
        "| round | JAX float32 | JAX bf16→f32 | torch float32 | torch bf16 |",
        "|---|---|---|---|---|",
    ]
    for index, peak in enumerate(report["peak"]["rounds"]):
        lines.append(
            f"| {index + 1} | {peak['jax_float32']:.0f} | {peak['jax_bfloat16']:.0f} | "
            f"{_torch_peak(peak, 'torch_float32')} | {_torch_peak(peak, 'torch_bfloat16')} |"
        )
    lines.append("")
    passes = [
        f"* {name}: warm-up {r['warmup_seconds']:.1f} s, of which "
        f"{r['warmup_extra']['compile_seconds']:.1f} s compiling "
        f"{r['warmup_extra']['compilations']} batch shape(s); per timed pass "
        f"{median_of(r['rounds'], 'load_seconds'):.2f} s weight load (excluded), engine "
        f"{median_of(r['rounds'], 'engine_seconds'):.1f} s of "
        f"{median_of(r['rounds'], 'wall_seconds'):.1f} s wall; padding "
        f"{100 * r['rounds'][0]['padding_fraction']:.1f}%, "
        f"{r['rounds'][0]['batch_shapes']} batch shape(s), {r['rounds'][0].get('batching', '?')}."
        for name, r in report["contenders"].items()
        if name.startswith("jaxmap")
    ] + [
        f"* {name}: padding {100 * r['rounds'][0]['padding_fraction']:.1f}% of computed positions."
        for name, r in report["contenders"].items()
        if name.startswith("hf-batched")
    ]
    if passes:
        lines += ["Passes:", "", *passes, ""]
    if report["profile"]:
        from throughput_profile import profile_markdown

        for profile in report["profile"]:
            lines += profile_markdown(profile)
    if report["notes"]:
        lines += ["Notes:", "", *[f"* {note}" for note in report["notes"]], ""]
    return "\n".join(lines)


def measure(
    contenders: list[Contender], args: argparse.Namespace
) -> tuple[dict[str, tuple[float, RunOutput]], dict[str, list[RunOutput]], list[dict], list]:
    """Warm every contender up once, then time them in interleaved rounds.

    Each round first measures the matmul peak, so every pass is compared with the peak of its
    own round. Returns the warm-ups (seconds, output), the timed passes, the peaks and the load
    average after each round.
    """
    log("warm-up pass of every contender (untimed)")
    warmups: dict[str, tuple[float, RunOutput]] = {}
    for contender in contenders:
        started = time.perf_counter()
        output = contender.warm_up()
        warmups[contender.name] = (time.perf_counter() - started, output)
        log(f"  {contender.name}: {warmups[contender.name][0]:.1f} s")
    peaks: list[dict] = []
    runs: dict[str, list[RunOutput]] = {c.name: [] for c in contenders}
    load_rounds = []
    for round_index in range(args.rounds):
        peaks.append(matmul_peak(args.matmul_size, args.matmul_repeats, args.torch_device))
        measured = ", ".join(f"{k} {v:.0f}" for k, v in peaks[-1].items())
        log(f"round {round_index + 1}/{args.rounds}: peak {measured} GFLOP/s")
        for contender in contenders:
            run = contender.run()
            runs[contender.name].append(run)
            speed = run.ntokens.sum() / run.seconds
            log(f"  {contender.name}: {run.seconds:.1f} s, {speed:.0f} tok/s")
        load_rounds.append(list(os.getloadavg()))
    return warmups, runs, peaks, load_rounds


def contender_record(
    contender: Contender,
    warmup: tuple[float, RunOutput],
    runs: list[RunOutput],
    peaks: list[dict],
    flops: int,
    agreement_record: dict,
    all_texts: int,
) -> dict:
    """Everything the report says about one contender."""
    warmup_seconds, warmup_output = warmup
    rounds = summarize(contender, runs, peaks, flops)
    subset = len(contender.indices) < all_texts
    return {
        "description": contender.description,
        "dtype": contender.dtype,
        "policy": contender.policy,
        "texts": len(contender.indices),
        "text_indices": contender.indices.tolist() if subset else None,
        "tokens": int(runs[0].ntokens.sum()),
        "flops": flops,
        "warmup_texts": len(warmup_output.loglik),
        "warmup_seconds": warmup_seconds,
        "warmup_extra": warmup_output.extra,
        "rounds": rounds,
        "median_seconds": median_of(rounds, "seconds"),
        "median_tokens_per_second": median_of(rounds, "tokens_per_second"),
        "median_gflops_per_second": median_of(rounds, "gflops_per_second"),
        "median_fraction_of_peak": median_of(rounds, "fraction_of_peak"),
        **{
            f"median_{figure}_{unit}": median_of(rounds, f"{figure}_{unit}")
            for figure in ("end_to_end", "scoring")
            for unit in ("seconds", "tokens_per_second")
            if all(f"{figure}_{unit}" in r for r in rounds)
        },
        "agreement": agreement_record,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = "python benchmarks/throughput.py " + shlex.join(argv)
    load_start = list(os.getloadavg())
    notes: list[str] = []

    texts = load_bench_texts(args.texts, args.texts_count)
    model = resolve_model(args.model, texts)
    log(f"model: {model.note}")
    if model.fallback:
        notes.append(model.note)
    shape = shape_of(model.directory)
    models = TorchModels(model.directory, args.threads, args.torch_device)
    paper_ids = [
        ids[: models.max_length] for ids in models.tokenizer(list(texts.texts))["input_ids"]
    ]
    lengths = np.array([len(ids) for ids in paper_ids])
    positions = np.maximum(lengths - 1, 0)
    paper_indices = stratified_subset(lengths, args.paper_texts or len(lengths))

    contenders, skipped = build_contenders(args, texts, model.directory, models, paper_indices)
    for name, reason in skipped.items():
        log(f"skipping {name}: {reason}")
        notes.append(f"{name} skipped: {reason}")
    warmups, runs, peaks, load_rounds = measure(contenders, args)
    log("agreement of the first timed pass with the float32 batched transformers loop")
    agreements = check_agreement(contenders, runs, models, paper_ids, paper_indices, args, notes)

    results: dict[str, dict] = {}
    for contender in contenders:
        # lm-eval scores its own sequences (one more token per text); count its FLOPs on them.
        scored = runs[contender.name][0].ntokens
        if contender.policy == "paper":
            scored = positions[contender.indices]
        results[contender.name] = contender_record(
            contender,
            warmups[contender.name],
            runs[contender.name],
            peaks,
            shape.flops(scored),
            agreements[contender.name],
            len(texts),
        )
        contender.close()

    profiles = []
    if args.profile:
        from throughput_profile import profile_jaxmap

        for dtype in sorted({c.dtype for c in contenders if isinstance(c, JaxmapScore)}, reverse=True):
            log(f"profiling jaxmap {dtype}")
            profiles.append(profile_jaxmap(model.directory, texts, dtype, args.batch_tokens))

    for name in ("paper-loop-f32", "paper-loop-bf16"):
        if name in results and len(paper_indices) < len(texts):
            notes.append(
                f"{name} scores {len(paper_indices)} of the {len(texts)} texts, spread evenly "
                "over the length-sorted texts (the same length profile): its tokens/s, GFLOP/s "
                "and speed-ups are per token and comparable with the others, its seconds are not"
            )
    if "lm-eval-f32" in results:
        notes.append(
            "lm-eval-f32 scores every text token after a prefix token (BOS, else EOS): one "
            "token more per text than the paper policy when the tokenizer adds no BOS; its "
            "tokens/s and FLOPs count its own tokens"
        )

    date = datetime.date.today().isoformat()
    report = {
        "schema": SCHEMA,
        "command": command,
        "date": date,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "tag": args.tag,
        "machine": machine_info(),
        "load_average": {
            "start": load_start,
            "after_each_round": load_rounds,
            "end": list(os.getloadavg()),
        },
        "model": {
            "reference": model.reference,
            "directory": str(model.directory),
            "fallback": model.fallback,
            "note": model.note,
            "shape": shape.describe(),
            "transformers_load_seconds": models.load_seconds,
        },
        "texts": {
            "source": texts.source,
            "count": len(texts),
            "fingerprint": texts.fingerprint,
            "tokens_scored": int(positions.sum()),
            "bytes_mean": float(np.mean(texts.byte_lengths)),
            "length_tokens": {
                "min": int(lengths.min()),
                "median": float(np.median(lengths)),
                "max": int(lengths.max()),
            },
        },
        "flops": {
            "formula": FLOP_FORMULA,
            "per_scored_token_linear_part": 2 * shape.matmul_weights,
            "total_paper_policy": shape.flops(positions),
        },
        "settings": {
            "rounds": args.rounds,
            "contenders": args.contenders,
            "jaxmap_batch_tokens": args.batch_tokens,
            "hf_batch_tokens": args.hf_batch_tokens,
            "lm_eval_batch_size": args.lm_eval_batch_size,
            "paper_texts": len(paper_indices),
            "torch_threads": args.threads,
            "torch_device": args.torch_device,
            "tolerances": {
                "float32_max_abs_nats": TOLERANCE_FLOAT32_NATS,
                "bfloat16_max_relative": TOLERANCE_BFLOAT16_RELATIVE,
            },
        },
        "peak": {
            "size": args.matmul_size,
            "repeats": args.matmul_repeats,
            "unit": "GFLOP/s",
            "rounds": peaks,
            "median": {k: float(np.median([p[k] for p in peaks])) for k in peaks[0]},
        },
        "contenders": results,
        "ratios": ratios(results),
        "skipped": skipped,
        "profile": profiles,
        "notes": notes,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"throughput-{machine_name()}-{date}" + (f"-{args.tag}" if args.tag else "")
    json_path, md_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report) + "\n")
    print(md_path.read_text())
    log(f"wrote {json_path} and {md_path}")
    failed = [name for name, record in results.items() if not record["agreement"]["ok"]]
    if failed:
        log(f"AGREEMENT FAILED for {', '.join(failed)}; see the JSON")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
