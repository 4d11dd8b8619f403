"""Commit cost of the store against its size: K rows × N texts, one row committed at a time.

    python benchmarks/bench_store.py --models 1000 --texts 10000 --machine cpu-2core --date 2026-11-22

Each commit is timed as the writer sees it (lock, duplicate check, row file written and
fsynced, and the compaction whenever the journal outgrows the matrix), plus the final
compaction that a job does when it ends and one full read with checksum verification. For
comparison, the commit of store format 1 (copy the whole file, append, fsync, rename) is
estimated by timing a copy + fsync of the store file at a few sizes. Writes
``benchmarks/results/store-commit-<machine>-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxmap.store import StoreWriter, journal_directory, open_store  # noqa: E402
from jaxmap.texts import TextSet  # noqa: E402


def paper_like_texts(count: int, seed: int = 0) -> TextSet:
    """Texts of 256–1024 UTF-8 bytes, like the paper's Pile chunks."""
    rng = np.random.default_rng(seed)
    words = np.array("the of model text language map a an in on for with by from data".split())
    texts = []
    for _ in range(count):
        target = int(rng.integers(257, 1025))
        text = " ".join(rng.choice(words, size=target // 3))
        texts.append(text[:target])
    return TextSet.from_texts(texts)


def copy_commit_seconds(path: Path) -> float:
    """What a format-1 commit paid before appending: a copy of every byte of the store, fsynced."""
    sources = [path, *sorted(journal_directory(path).glob("*.row"))]
    copies = [source.with_name(source.name + ".copy") for source in sources]
    started = time.perf_counter()
    for source, copy in zip(sources, copies):
        shutil.copyfile(source, copy)
        with open(copy, "rb+") as handle:
            os.fsync(handle.fileno())
    seconds = time.perf_counter() - started
    for copy in copies:
        copy.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--texts", type=int, default=10000)
    parser.add_argument("--machine", default=platform.node())
    parser.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    parser.add_argument("--dir", help="where to build the store (default: a temporary directory)")
    args = parser.parse_args()

    texts = paper_like_texts(args.texts)
    rng = np.random.default_rng(1)
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="jaxmap-bench-store-"))
    path = workdir / "bench.h5"
    writer = StoreWriter(path, texts, {"dtype": "float32", "bos_policy": "full"})
    commits = []
    copy_estimates = {}
    meta = {"architecture": "LlamaForCausalLM", "revision": "sha256:" + "0" * 16, "tokens_per_second": 1.0}
    for k in range(args.models):
        loglik = -rng.gamma(50.0, 6.0, args.texts)
        ntokens = rng.integers(50, 300, args.texts).astype(np.int32)
        started = time.perf_counter()
        writer.append(f"model-{k:05d}", loglik, ntokens, np.zeros(args.texts, bool), {**meta, "key": f"org/model-{k}@main"})
        commits.append(time.perf_counter() - started)
        if k + 1 in (10, 100, 500, 1000, args.models):
            copy_estimates[k + 1] = copy_commit_seconds(path)
    started = time.perf_counter()
    writer.compact()
    final_compaction = time.perf_counter() - started
    started = time.perf_counter()
    store = open_store(path)
    read_seconds = time.perf_counter() - started
    assert len(store.models) == args.models
    size = path.stat().st_size

    commits = np.array(commits)
    bands = []
    edges = sorted({0, *[e for e in (10, 100, 250, 500, 750, 1000) if e < args.models], args.models})
    for lo, hi in zip(edges, edges[1:]):
        band = commits[lo:hi]
        bands.append({
            "rows": f"{lo + 1}-{hi}", "median_ms": float(np.median(band) * 1e3),
            "mean_ms": float(band.mean() * 1e3), "max_ms": float(band.max() * 1e3),
        })
    results = {
        "command": "python benchmarks/bench_store.py " + shlex.join(sys.argv[1:]),
        "machine": args.machine, "date": args.date, "models": args.models, "texts": args.texts,
        "store_bytes": size, "row_bytes": args.texts * 13,
        "commit_seconds_total": float(commits.sum()),
        "commit_ms_median": float(np.median(commits) * 1e3),
        "commit_ms_mean": float(commits.mean() * 1e3),
        "commit_ms_max": float(commits.max() * 1e3),
        "bands": bands,
        "final_compaction_seconds": final_compaction,
        "open_store_seconds": read_seconds,
        "format1_copy_commit_seconds_at_rows": copy_estimates,
    }
    out = Path(__file__).resolve().parent / "results" / f"store-commit-{args.machine}-{args.date}"
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# Store commit cost — {args.machine}, {args.date}",
        "",
        f"`{results['command']}`",
        "",
        f"{args.models} rows × {args.texts} texts (paper-like texts of 256–1024 bytes); store "
        f"{size / 1e6:.1f} MB, one row {args.texts * 13 / 1e3:.0f} kB of values.",
        "",
        "| rows | median commit (ms) | mean (ms) | max (ms) |",
        "|---|---|---|---|",
        *[f"| {b['rows']} | {b['median_ms']:.1f} | {b['mean_ms']:.1f} | {b['max_ms']:.1f} |" for b in bands],
        "",
        f"All {args.models} commits: {commits.sum():.1f} s in total (mean {commits.mean() * 1e3:.1f} ms; the "
        "maxima are the commits that folded the journal into the matrix).",
        f"Final compaction (what a job does at its end): {final_compaction:.2f} s. "
        f"`open_store` with checksum verification: {read_seconds:.2f} s.",
        "",
        "Store format 1 paid a full copy of the store per commit; measured copy + fsync here:",
        "",
        "| rows in the store | copy + fsync (s) |",
        "|---|---|",
        *[f"| {rows} | {seconds:.3f} |" for rows, seconds in copy_estimates.items()],
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(workdir) if not args.dir else None


if __name__ == "__main__":
    main()
