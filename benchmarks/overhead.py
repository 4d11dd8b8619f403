"""What a one-model ``jaxmap.score`` call spends outside scoring (issue 27, item 2).

Builds a random-initialised Llama of the issue's ~100M class (10 layers, width 768, GQA 12/4,
MLP 3072) with SmolLM2's packaged 49k-token tokenizer (no 32k-token tokenizer is packaged), then
calls ``jaxmap.score([model], texts, out=NEW_STORE)`` ``--calls`` times in one process, each into
a fresh store (so every call opens a store, tokenizes or not, commits and compacts), and prints,
per call, the end-to-end wall time, the scoring alone, and the run summary's per-model
``overhead`` breakdown (``STORE.run.json``; docs/store.md). The first call compiles; the later
ones reuse the compiled scorers, as the models of one shape do in a long job.

    python benchmarks/overhead.py --texts-count 64 --calls 4 [--json FILE] [--profile FILE]

``--same-store`` sends every call to one directory with fresh store names, so that the token
cache (beside the store) is reused from the second call on, as in a job over many models of one
tokenizer. ``--profile`` writes a cProfile of the warm calls.

``--loads N`` times the model's load alone instead (``jaxmap.engine.load_model``, and the
validation of its files), 2N times each way, in blocks alternating in one process so that a busy
machine slows both alike: "before" reads the weights through safetensors' reader untimed and
parses the tokenizer files on every validation (jaxmap before issue 27, and now); "after" is
the present path (``Checkpoint.open_weights``), with whatever a trial changes in it.
``--ab N`` does the same with whole ``jaxmap.score`` calls, in blocks of N calls.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput_workload import RANDOM_SHAPES  # noqa: E402 (after the path entry above)

# Issue 27's shape; the vocabulary is the tokenizer's.
ISSUE_SHAPE = {k: v for k, v in RANDOM_SHAPES["llama-112m"].items() if k != "vocab_size"}


def build_model(directory: Path) -> Path:
    """The ~100M Llama of :data:`ISSUE_SHAPE` with SmolLM2's tokenizer, in ``directory``."""
    import torch
    import transformers

    from jaxmap.checkpoints import resolve

    if (directory / "model.safetensors").is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    packaged = resolve("smollm2-135m-instruct").directory
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(packaged / name, directory / name)
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(str(directory))
    config = transformers.LlamaConfig(
        **ISSUE_SHAPE, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def one_call(model: Path, texts, out: Path) -> dict:
    import jaxmap

    started = time.perf_counter()
    jaxmap.score([str(model)], texts, out, progress=False)
    wall = time.perf_counter() - started
    record = json.loads(out.with_name(out.name + ".run.json").read_text())["jobs"][-1]
    (entry,) = record["models"]
    return {
        "call_seconds": wall,
        "job_seconds": record["seconds"],
        "score_seconds": entry["seconds"],
        "tokens": entry["tokens"],
        "outside_scoring": wall - entry["seconds"],
        "phases": entry.get("phases", {}),
        "overhead": entry.get("overhead"),
        "job_overhead": record.get("overhead"),
    }


def _safetensors_reader(checkpoint):
    """The weights as jaxmap read them before issue 27: safetensors' numpy reader, untimed.
    (Reading them into aligned arrays instead was tried and measured slower inside a job.)"""
    from safetensors import safe_open

    from jaxmap.models import WeightSource

    checkpoint.fetch_weights()
    handles = [safe_open(str(f), framework="numpy") for f in checkpoint.weight_files()]
    owner = {name: handle for handle in handles for name in handle.keys()}
    return WeightSource(
        tensors=lambda name: owner[name].get_tensor(name), names=frozenset(owner), model=checkpoint.reference
    )


def compare_loads(model: Path, count: int) -> dict:
    """Median seconds of validate and load_model, the old way and the new, alternating."""
    import statistics

    import jax

    from jaxmap.checkpoints import Checkpoint, resolve, validate
    from jaxmap.engine import load_model

    present = Checkpoint.open_weights
    seconds: dict[str, dict[str, list[float]]] = {
        way: {"validate": [], "load": [], "read": [], "layout": [], "place": []} for way in ("before", "after")
    }
    # Blocks of BLOCK loads one way, then the other, twice over (ABAB), the first load of each
    # block not counted: a job loads its models one way only, and a load that follows one of
    # the other way finds the memory allocator in that way's state (measured: up to 2x slower).
    order = [way for _ in range(2) for way in ("before", "after") for _ in range(count + 1)]
    for index, way in enumerate(order):
        counted = index % (count + 1) != 0
        Checkpoint.open_weights = _safetensors_reader if way == "before" else present
        try:
            checkpoint = resolve(str(model))
            started = time.perf_counter()
            validate(checkpoint)
            validated = time.perf_counter() - started
            loaded = load_model(checkpoint)
            timing = checkpoint.load_timing()
            if counted:
                seconds[way]["validate"].append(validated)
                seconds[way]["load"].append(loaded.load_seconds)
                seconds[way]["read"].append(timing["read"])
                seconds[way]["layout"].append(timing["layout"])
                seconds[way]["place"].append(loaded.load_seconds - timing["read"] - timing["layout"])
            jax.block_until_ready(loaded.params)
            del loaded
        finally:
            Checkpoint.open_weights = present
    medians = {way: {k: statistics.median(v) for k, v in parts.items()} for way, parts in seconds.items()}
    for way, parts in medians.items():
        print(f"{way}: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()) + f" (median of {2 * count})")
    return {"medians": medians, "samples": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts-count", type=int, default=64, help="standard-library texts")
    parser.add_argument("--calls", type=int, default=4, help="calls in one process (the first compiles)")
    parser.add_argument("--model-dir", type=Path, help="where the model is built (kept; default: temporary)")
    parser.add_argument("--same-store", action="store_true", help="one directory for every store")
    parser.add_argument("--json", type=Path, help="write every call's record here")
    parser.add_argument("--profile", type=Path, help="cProfile of the warm calls, to this file")
    parser.add_argument("--loads", type=int, default=0, help="time N loads each way instead (see above)")
    parser.add_argument(
        "--ab", type=int, default=0,
        help="calls in blocks of N, alternating the path before issue 27 and the present one "
        "(the first call of each block not counted)",
    )
    args = parser.parse_args(argv)

    from throughput_workload import cpu_matrix_features, cpu_model, stdlib_texts

    work = Path(tempfile.mkdtemp(prefix="jaxmap-overhead-"))
    model = build_model(args.model_dir or work / "model")
    if args.loads:
        report = {
            "cpu_model": cpu_model(), "cpu_matrix_features": cpu_matrix_features(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "shape": ISSUE_SHAPE,
            "loads": compare_loads(model, args.loads),
            "command": "python benchmarks/overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        if args.model_dir is None:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    texts = stdlib_texts(args.texts_count)
    records = []
    profiler = cProfile.Profile() if args.profile else None
    from jaxmap.checkpoints import Checkpoint

    present = Checkpoint.open_weights
    for call in range(args.calls):
        way = None
        if args.ab:
            way = ("before", "after")[(call // args.ab) % 2]
            Checkpoint.open_weights = _safetensors_reader if way == "before" else present

        out = (work / "stores" / f"s{call}.h5") if args.same_store else (work / f"call{call}" / "s.h5")
        out.parent.mkdir(parents=True, exist_ok=True)
        if profiler is not None and call > 0:
            profiler.enable()
        try:
            records.append(one_call(model, texts, out))
        finally:
            Checkpoint.open_weights = present
        if profiler is not None:
            profiler.disable()
        r = records[-1]
        r["way"], r["counted"] = way, bool(args.ab) and call % args.ab != 0
        parts = (r["overhead"] or {}).get("parts") or r["phases"]
        print(
            (f"{way} " if way else "") + f"call {call}: {r['call_seconds']:.3f} s end to end, {r['score_seconds']:.3f} s scoring "
            f"({r['tokens'] / r['call_seconds']:.0f} vs {r['tokens'] / r['score_seconds']:.0f} tok/s), "
            f"{r['outside_scoring']:.3f} s outside scoring: "
            + ", ".join(f"{k} {v:.3f}" for k, v in parts.items() if isinstance(v, float)),
            flush=True,
        )
    if profiler is not None:
        profiler.dump_stats(args.profile)
    if args.ab:
        import statistics

        for way in ("before", "after"):
            kept = [r for r in records if r["way"] == way and r["counted"]]
            if not kept:
                continue
            parts = {k: statistics.median(r["overhead"]["parts"][k] for r in kept) for k in kept[0]["overhead"]["parts"]}
            load = {k: statistics.median(r["overhead"]["load_detail"][k] for r in kept) for k in ("seconds", "read", "layout", "place")}
            outside = statistics.median(r["overhead"]["outside_scoring"] for r in kept)
            whole = statistics.median(r["call_seconds"] - r["score_seconds"] for r in kept)
            print(
                f"{way}: median of {len(kept)}: call outside scoring {whole:.3f} s, model outside scoring "
                f"{outside:.3f} s; " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items())
                + "; load " + ", ".join(f"{k} {v:.3f}" for k, v in load.items())
            )
    report = {
        "cpu_model": cpu_model(),
        "cpu_matrix_features": cpu_matrix_features(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "texts": len(texts),
        "shape": ISSUE_SHAPE,
        "calls": records,
        "command": "python benchmarks/overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    shutil.rmtree(work / "stores", ignore_errors=True)
    for call in range(args.calls):
        shutil.rmtree(work / f"call{call}", ignore_errors=True)
    if args.model_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
