"""XLA's CPU backend options, measured on the decoder's matmuls and on whole scoring passes.

The question behind it: does XLA's CPU backend reach the CPU's matrix units (AMX tiles,
AVX-512 BF16) the way torch's oneDNN does, and does one of the backend's own options (YNNPACK
off, oneDNN or XNNPACK instead, see :data:`SETTINGS`) change that? Each setting runs in a fresh
process with its ``XLA_FLAGS`` (flags are read once per process), in interleaved rounds, and
reports:

* which library ran each dot of the engine's compiled scorers (read from their optimised HLO);
* scoring alone: ``jaxmap.engine.score_tokens`` over the texts with a loaded model, best of the
  repeats after a compiling pass, in tokens/s, and how far its log-likelihoods move from the
  default setting's (an option that changes numerics shows up there);
* the model's own matmuls on :data:`MATMUL_ROWS` rows (q/o, k/v, MLP, one unembedding tile), in
  GFLOP/s, and torch's ``Linear`` at the same shapes and dtype for comparison.

A flag this jaxlib does not know stops its process: that setting is reported as refused, with
XLA's message; a process that fails otherwise, as failed, with its last line. ::

    python benchmarks/xla_cpu_flags.py [--model REF] [--texts-count 32] [--rounds 2]
        [--dtypes float32,bfloat16] [--settings default,onednn,...] [--tag TAG]
        [--out-dir benchmarks/results]

``--model random:llama-112m`` is issue 27's 112M Llama shape; the default is the throughput
harness's model (the packaged SmolLM2-135M).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from throughput_profile import shape_matmuls
from throughput_workload import (
    describe_matrix_features, load_bench_texts, machine_info, resolve_model, shape_of,
)

# Each setting is one process's XLA_FLAGS, added to whatever the caller's environment has.
# jaxlib 0.10's CPU backend hands every dot to YNNPACK by default; the oneDNN and XNNPACK options
# only get a dot once YNNPACK's fusions are switched off (an empty fusion type), and
# "ynn-dot-fusion" narrows YNNPACK to plain dots. Each result says which library ran the dots.
NO_YNNPACK = "--xla_cpu_experimental_ynn_fusion_type="
SETTINGS = {
    "default": "",
    "no-ynnpack": NO_YNNPACK,
    "onednn": f"{NO_YNNPACK} --xla_cpu_use_onednn=true",
    "onednn-custom-call": f"{NO_YNNPACK} --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": f"{NO_YNNPACK} --xla_cpu_use_xnnpack=true",
    "xnn-dot-fusion": f"{NO_YNNPACK} --xla_cpu_experimental_xnn_fusion_type=dot",
    "ynn-dot-fusion": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "vector-width-512": "--xla_cpu_prefer_vector_width=512",
}
# How a compiled program's text names the libraries its dots were given to.
_FUSION_LIBRARIES = {"__ynn_fusion": "YNNPACK", "__xnn_fusion": "XNNPACK", "__onednn_fusion": "oneDNN"}


def dot_libraries(hlo_text: str) -> dict[str, int]:
    """How many dots of an optimised HLO module each library runs: a dot inside a computation
    that a YNNPACK, XNNPACK or oneDNN fusion calls counts for that library, a oneDNN matmul
    custom call for oneDNN, any other dot for XLA's own code."""
    computations: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{$", line)
        if header:
            current = header[1]
            computations[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None:
            computations[current].append(line)
    library_of = {}
    for lines in computations.values():
        for line in lines:
            kind = re.search(r'"kind":"(__\w+)"', line)
            called = re.search(r"calls=%([\w.\-]+)", line)
            if kind and called:
                library_of[called[1]] = _FUSION_LIBRARIES.get(kind[1], kind[1])
    counts: Counter[str] = Counter()
    for name, lines in computations.items():
        for line in lines:
            if re.search(r"\bdot\(", line):
                library = library_of.get(name, "XLA")
            elif re.search(r'custom_call_target="[^"]*onednn[^"]*matmul', line, re.IGNORECASE):
                library = "oneDNN"
            else:
                continue
            counts[library] += 1
    return dict(counts)


# Rows of the matmul measurements: the engine's default batch of 2048 padded tokens.
MATMUL_ROWS = 2048


def measure_setting(model_directory: Path, texts_path: Path, dtype: str, repeats: int) -> dict:
    """In this process (XLA_FLAGS already set): scoring alone and the shape's matmuls."""
    import jax

    # XLA reads its flags when the backend starts; a flag it does not know stops it here.
    jax.devices()
    from jaxmap import engine
    from jaxmap.engine import load_model, score_tokens
    from jaxmap.texts import load_texts
    from jaxmap.tokenization import tokenize

    texts = load_texts(texts_path)
    model = load_model(str(model_directory), dtype=dtype)
    tokens = tokenize(texts, model.tokenizer, "paper")
    started = time.perf_counter()
    scores = score_tokens(model, tokens, progress=False)
    first_pass = time.perf_counter() - started
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        score_tokens(model, tokens, progress=False)
        best = min(best, time.perf_counter() - started)
    scored = int(sum(scores.ntokens))
    # The engine's compiled scorers (a private cache: this benchmark follows the engine).
    libraries = sum((Counter(dot_libraries(c.as_text())) for c in engine._COMPILED.values()), Counter())
    return {
        "scored_tokens": scored,
        "first_pass_seconds": first_pass,
        "scoring_seconds": best,
        "tokens_per_second": scored / best,
        "loglik": [float(v) for v in scores.loglik],
        "dot_libraries": dict(libraries),
        "matmuls": shape_matmuls(shape_of(model_directory), MATMUL_ROWS, dtype, repeats=5),
    }


def torch_matmuls(matmuls: list[dict], dtype: str, repeats: int = 5) -> dict[str, float]:
    """torch ``Linear`` GFLOP/s at each of ``matmuls``' shapes, in ``dtype``."""
    import torch

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    rates = {}
    with torch.inference_mode():
        for entry in matmuls:
            rows, inner, outer = entry["shape"]
            x = torch.randn(rows, inner, dtype=torch_dtype)
            layer = torch.nn.Linear(inner, outer, bias=False).to(torch_dtype)
            layer(x)
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                layer(x)
                best = min(best, time.perf_counter() - started)
            rates[entry["matmul"]] = 2 * rows * inner * outer / best / 1e9
    return rates


def run_child(setting: str, dtype: str, model_directory: Path, texts_path: Path,
              repeats: int, scratch: Path) -> dict:
    """One setting and dtype in a fresh process. A flag XLA does not know comes back as
    ``refused``, any other failure of the process as ``failed``, each with its last line."""
    out = scratch / f"{setting}-{dtype}.json"
    environment = dict(os.environ)
    environment["XLA_FLAGS"] = f"{environment.get('XLA_FLAGS', '')} {SETTINGS[setting]}".strip()
    command = [
        sys.executable, __file__, "--child", setting, dtype, str(model_directory),
        str(texts_path), str(repeats), str(out),
    ]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True)
    if finished.returncode != 0:
        lines = [line for line in finished.stderr.splitlines() if line.strip()]
        unknown = [line for line in lines if "Unknown flag in XLA_FLAGS" in line]
        if unknown:
            return {"refused": unknown[-1]}
        return {"failed": lines[-1] if lines else f"exit status {finished.returncode}"}
    return json.loads(out.read_text())


def _best_of_rounds(rounds: list[dict]) -> dict:
    good = [r for r in rounds if "refused" not in r and "failed" not in r]
    if not good:
        return rounds[0]
    best = min(good, key=lambda r: r["scoring_seconds"])
    matmuls = []
    for position, entry in enumerate(best["matmuls"]):
        rate = max(r["matmuls"][position]["gflops_per_second"] for r in good)
        matmuls.append({**entry, "gflops_per_second": rate})
    each_round = [r["tokens_per_second"] for r in good]
    return {**best, "matmuls": matmuls, "rounds_tokens_per_second": each_round}


def _libraries_cell(libraries: dict[str, int] | None) -> str:
    if not libraries:
        return "—"
    return ", ".join(f"{name} {count}" for name, count in sorted(libraries.items()))


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"# XLA CPU options: scoring and matmuls — {machine['name']}, {report['date']}"
        + (f" ({report['tag']})" if report["tag"] else ""),
        "",
        f"`{report['command']}`",
        "",
        f"* Machine: {machine['cpu_model']}, {machine['cpu_count']} cores; CPU matrix features: "
        f"{describe_matrix_features(machine['cpu_matrix_features'])}.",
        f"* jax {machine['versions']['jax']}, jaxlib {machine['versions']['jaxlib']}, torch "
        f"{machine['versions']['torch']}; XLA_FLAGS of the caller: {machine['xla_flags']!r}.",
        f"* Model: {report['model'].rstrip('.')}. Texts: {report['texts']} ({report['texts_source']}).",
        f"* {report['rounds']} interleaved round(s); each setting and dtype runs in its own "
        "process (a compiling pass, then the best of "
        f"{report['repeats']} passes); the best round is shown, each round's tokens/s beside it. "
        "Matmuls: the model's "
        f"projections on {MATMUL_ROWS} rows, best of 5, float32 accumulation.",
        "",
    ]
    for dtype, rows in report["results"].items():
        default = rows.get("default", {})
        names = [m["matmul"] for m in default.get("matmuls", [])]
        lines += [
            f"## {dtype}",
            "",
            "| setting | XLA_FLAGS | scorer's dots run by | scoring tok/s | each round | vs default "
            "| max \\|Δℓ\\| vs default (nats) | "
            + " | ".join(f"{name} GFLOP/s" for name in names) + " |",
            "|---|---|---|---|---|---|---|" + "---|" * len(names),
        ]
        for setting, result in rows.items():
            flags = f"`{SETTINGS[setting]}`" if SETTINGS[setting] else "(none)"
            if "refused" in result or "failed" in result:
                outcome = "refused" if "refused" in result else "failed"
                lines.append(f"| {setting} | {flags} | {outcome}: {result[outcome]} |"
                             + " |" * (4 + len(names)))
                continue
            speed = result["tokens_per_second"]
            ratio = speed / default["tokens_per_second"] if "tokens_per_second" in default else None
            delta = (np.max(np.abs(np.subtract(result["loglik"], default["loglik"])))
                     if "loglik" in default else None)
            cells = [f"{m['gflops_per_second']:.0f}" for m in result["matmuls"]]
            lines.append(
                f"| {setting} | {flags} | {_libraries_cell(result.get('dot_libraries'))} | "
                f"{speed:.0f} | "
                + ", ".join(f"{r:.0f}" for r in result["rounds_tokens_per_second"]) + " | "
                + (f"{ratio:.2f}×" if ratio is not None else "—") + " | "
                + (f"{delta:.1e}" if delta is not None else "—") + " | "
                + " | ".join(cells) + " |"
            )
        torch_rates = report["torch_matmuls"].get(dtype, {})
        if torch_rates:
            lines.append(
                "| torch `Linear` | — | — | — | — | — | — | "
                + " | ".join(f"{torch_rates[name]:.0f}" for name in names) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        setting, dtype, model_directory, texts_path, repeats, out = argv[1:]
        result = measure_setting(Path(model_directory), Path(texts_path), dtype, int(repeats))
        Path(out).write_text(json.dumps({"setting": setting, "dtype": dtype, **result}))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="any jaxmap model reference, or random:SHAPE")
    parser.add_argument("--texts", help="JSONL text set (default: the standard-library set)")
    parser.add_argument("--texts-count", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--tag", default="")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    settings = [s for s in args.settings.split(",") if s]
    unknown = [d for d in dtypes if d not in ("float32", "bfloat16")]
    unknown += [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown dtype or setting {', '.join(unknown)}; settings: {', '.join(SETTINGS)}")
    if "default" not in settings:
        settings.insert(0, "default")

    texts = load_bench_texts(args.texts, args.texts_count)
    model = resolve_model(args.model, texts)
    print(model.note, flush=True)
    rounds: dict[str, dict[str, list[dict]]] = {d: {s: [] for s in settings} for d in dtypes}
    with tempfile.TemporaryDirectory(prefix="jaxmap-xla-flags-") as scratch:
        texts_path = Path(scratch) / "texts.jsonl"
        texts.to_jsonl(texts_path)
        for round_number in range(1, args.rounds + 1):
            for dtype in dtypes:
                for setting in settings:
                    result = run_child(setting, dtype, model.directory, texts_path,
                                       args.repeats, Path(scratch))
                    rounds[dtype][setting].append(result)
                    said = (
                        result.get("refused") or result.get("failed")
                        or f"{result['tokens_per_second']:.0f} tok/s"
                    )
                    print(f"round {round_number}: {dtype} {setting}: {said}", flush=True)
    results = {d: {s: _best_of_rounds(r) for s, r in per.items()} for d, per in rounds.items()}
    torch_rates = {
        dtype: torch_matmuls(rows["default"]["matmuls"], dtype)
        for dtype, rows in results.items() if "matmuls" in rows["default"]
    }
    date = datetime.date.today().isoformat()
    report = {
        "date": date,
        "tag": args.tag,
        "command": "python benchmarks/xla_cpu_flags.py " + " ".join(argv),
        "machine": machine_info(),
        "model": model.note,
        "texts": len(texts),
        "texts_source": texts.source,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "settings": {s: SETTINGS[s] for s in settings},
        "results": results,
        "torch_matmuls": torch_rates,
    }
    stem = f"xla-cpu-flags-{report['machine']['name']}-{date}" + (f"-{args.tag}" if args.tag else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (args.out_dir / f"{stem}.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    print(f"wrote {args.out_dir / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
