"""Time and peak memory of clip, double_center and kl_matrix on a K×N log-likelihood matrix.

    python benchmarks/bench_geometry.py --models 20000 --texts 10000 \\
        --machine cpu-2core --date 2026-11-21

Writes ``benchmarks/results/geometry-<machine>-<date>.json`` and ``.md``. The matrix is
synthetic but shaped like real scores (per-text difficulty of hundreds of nats plus model
effects); its K×K float64 result is kept in memory. Peak memory is the process's resident set
size sampled every 10 ms during each phase (and the lifetime maximum from getrusage).
Accuracy is checked on random pairs against float64 numpy computed from the differences.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import jax
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxmap.analysis import clip, double_center, kl_matrix  # noqa: E402

GIB = 1024**3


@contextmanager
def measured(phase: str, results: dict):
    """Record wall time and peak RSS (sampled) of the enclosed block under results[phase]."""
    process = psutil.Process()
    peak = process.memory_info().rss
    before = peak
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.01):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        sampler.join()
        peak = max(peak, process.memory_info().rss)
        results[phase] = {
            "seconds": round(elapsed, 2),
            "rss_before_gib": round(before / GIB, 2),
            "peak_rss_gib": round(peak / GIB, 2),
        }
        print(f"{phase}: {elapsed:.1f} s, peak RSS {peak / GIB:.2f} GiB", flush=True)


def synthetic_loglik(models: int, texts: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    difficulty = -rng.uniform(200.0, 2000.0, texts)
    loglik = np.empty((models, texts))
    for start in range(0, models, 1000):  # in chunks: no second full-size temporary
        stop = min(start + 1000, models)
        loglik[start:stop] = difficulty + rng.normal(0.0, 5.0, (stop - start, texts))
        loglik[start:stop] += rng.normal(0.0, 20.0, (stop - start, 1))
    return loglik


def gram_flop(models: int, texts: int, block_size: int) -> float:
    """Floating-point operations of the block products kl_matrix runs (upper triangle of blocks)."""
    block = min(block_size, models)
    blocks = -(-models // block)
    return blocks * (blocks + 1) / 2 * 2.0 * block * block * texts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=20000)
    parser.add_argument("--texts", type=int, default=10000)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--check-pairs", type=int, default=200)
    parser.add_argument("--machine", default="cpu-2core")
    parser.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()

    results: dict = {}
    load_before = os.getloadavg()
    loglik = synthetic_loglik(args.models, args.texts, seed=0)
    print(f"L: {args.models} × {args.texts} float64 = {loglik.nbytes / GIB:.2f} GiB", flush=True)

    with measured("clip", results):
        loglik, tau = clip(loglik, 0.02)
    with measured("double_center", results):
        Q = double_center(loglik)
    del Q
    with measured("kl_matrix", results):
        kl = kl_matrix(loglik, block_size=args.block_size, progress=True)

    rng = np.random.default_rng(1)
    rows = rng.integers(0, args.models, args.check_pairs)
    cols = (rows + rng.integers(1, args.models, args.check_pairs)) % args.models
    reference = np.array([np.var(loglik[i] - loglik[j]) / 2.0 for i, j in zip(rows, cols)])
    relative_error = float(np.max(np.abs(kl[rows, cols] - reference) / reference))
    symmetric = bool(np.array_equal(kl[:2000, :2000], kl[:2000, :2000].T))

    report = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]]),
        "machine": args.machine,
        "date": args.date,
        "models": args.models,
        "texts": args.texts,
        "block_size": args.block_size,
        "input_gib": round(args.models * args.texts * 8 / GIB, 2),
        "output_gib": round(args.models**2 * 8 / GIB, 2),
        "output": "float64 K×K numpy array in memory",
        "phases": results,
        "process_peak_rss_gib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2
        ),
        "gram_gflop": round(gram_flop(args.models, args.texts, args.block_size) / 1e9, 1),
        "max_relative_error_vs_numpy_float64": relative_error,
        "checked_pairs": args.check_pairs,
        "exactly_symmetric_first_2000": symmetric,
        "tau": tau,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"geometry-{args.machine}-{args.date}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    kl_phase = results["kl_matrix"]
    stem.with_suffix(".md").write_text(
        f"# Geometry benchmark, {args.machine}, {args.date}\n\n"
        f"`{report['command']}`\n\n"
        f"K = {args.models} models × N = {args.texts} texts (L: {report['input_gib']} GiB float64; "
        f"K×K result: {report['output_gib']} GiB float64, kept in memory), "
        f"block size {args.block_size}.\n\n"
        "| phase | wall time (s) | RSS before (GiB) | peak RSS (GiB) |\n|---|---|---|---|\n"
        + "".join(
            f"| {phase} | {r['seconds']} | {r['rss_before_gib']} | {r['peak_rss_gib']} |\n"
            for phase, r in results.items()
        )
        + f"\nkl_matrix: {report['gram_gflop']} GFLOP of float64 Gram products → "
        f"{report['gram_gflop'] / kl_phase['seconds']:.0f} GFLOP/s effective.\n"
        f"Process peak RSS (getrusage): {report['process_peak_rss_gib']} GiB.\n"
        f"Max relative error vs float64 numpy on {args.check_pairs} random pairs: "
        f"{relative_error:.2e}; "
        f"exactly symmetric: {symmetric}.\n"
        f"Load average before/after (other jobs share the 2 cores): "
        f"{report['load_average_before']} / "
        f"{report['load_average_after']}.\n"
    )
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
