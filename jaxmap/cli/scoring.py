"""``jaxmap score``, ``jaxmap info`` and ``jaxmap chunk``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from .. import distributed
from . import int_at_least


def register(subparsers) -> None:
    from ..engine import ACCELERATOR_BATCH_TOKENS, CPU_BATCH_TOKENS
    from ..models.attention import PATHS as ATTENTION_PATHS
    from ..scoring_options import DEFAULT_DTYPE, LOGPROB_KERNELS

    score = subparsers.add_parser(
        "score",
        help="score models on a text set into an HDF5 store",
        description=(
            "Score every MODEL on every text and append one row per model to the store. "
            "MODEL is a local HF directory, a hub id org/name[@revision], a .gguf file, a "
            "packaged model name, or a .txt/.yaml file listing models. Models already in the "
            "store are skipped, so re-running a killed job computes only what is missing."
        ),
    )
    score.add_argument("models", nargs="+", metavar="MODEL")
    score.add_argument(
        "--texts", required=True,
        help="JSONL text set: a 'text' field per line, or 'context' and 'continuation' (also "
        "'prompt' and 'response') to store log p(continuation | context)",
    )
    score.add_argument("--out", required=True, help="HDF5 store to create or extend")
    score.add_argument(
        "--dtype", default=DEFAULT_DTYPE, choices=["float32", "bfloat16", "float16"],
        help="weight/matmul dtype; accumulation and softmax stay float32 (default: %(default)s)",
    )
    score.add_argument(
        "--bos-policy", default="full", choices=["full", "paper"],
        help="full: start token + every text token scored; paper: the 1,000-model paper's rule "
        "(default: %(default)s)",
    )
    score.add_argument(
        "--batch-tokens", type=int_at_least(16),
        help=f"padded tokens per batch (default: {CPU_BATCH_TOKENS} on CPU, "
        f"{ACCELERATOR_BATCH_TOKENS} on GPU/TPU)",
    )
    score.add_argument(
        "--long-texts", default="truncate", choices=["truncate", "rolling"],
        help="texts longer than a model's context: cut to it, or scored in overlapping windows "
        "so that every token counts (default: %(default)s; a store setting)",
    )
    score.add_argument(
        "--stride", type=int_at_least(1), metavar="K",
        help="with --long-texts rolling: tokens between window starts (default: half the context)",
    )
    score.add_argument(
        "--packing", default="auto", choices=["auto", "pack", "buckets"],
        help="pack texts into rows with segment ids, or bucket them by length; auto takes the "
        "cheaper by estimated FLOPs (default: %(default)s)",
    )
    score.add_argument(
        "--attention", default="auto", choices=["auto", *ATTENTION_PATHS],
        help="attention path: auto picks per backend and row length; pallas is the hand-written "
        "kernel (one device; interpret mode, slow, on CPU) (default: %(default)s)",
    )
    score.add_argument(
        "--logprob-kernel", default="fused", choices=list(LOGPROB_KERNELS),
        help="log-prob kernel: the pure-JAX vocab-tiled one, or the hand-written Pallas one "
        "(one device) (default: %(default)s)",
    )
    score.add_argument("--cache-dir", help="cache for converted GGUF weights (default: ~/.cache/jaxmap)")
    score.add_argument(
        "--shard", metavar="I/N",
        help="score only shard I of N (0 <= I < N) of the list, e.g. one per SLURM array task; "
        "join the stores with `jaxmap merge`",
    )
    score.add_argument(
        "--shard-by", default="cost", choices=["cost", "index"],
        help="with --shard: balance the shards by estimated cost (parameters x tokens, from the "
        "configs), or take models I, I+N, I+2N, ... of the list (default: %(default)s)",
    )
    score.add_argument(
        "--mesh", metavar="data=D,model=M",
        help="device mesh: batches split over D, weights over M devices (default: every device "
        "on the data axis)",
    )
    hosts = score.add_argument_group(
        "multi-host runs (one process per host; process 0 writes the store)"
    )
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    hosts.add_argument("--num-processes", type=int, metavar="P")
    hosts.add_argument("--process-id", type=int, metavar="I")
    hosts.add_argument(
        "--distributed", action="store_true",
        help="join a multi-host run described by the cluster launcher's environment (SLURM, Open MPI)",
    )
    hub = score.add_argument_group("hub downloads")
    hub.add_argument(
        "--delete-after", action="store_true",
        help="delete a hub model's downloaded weights from the hub cache once it is scored",
    )
    hub.add_argument(
        "--disk-budget", type=_size, metavar="SIZE",
        help="bound the hub weights downloaded and not yet released to SIZE (e.g. 200G; default: "
        "three times the largest model); weights download up to two models ahead",
    )
    score.add_argument(
        "--logit-lens", action="store_true",
        help="also store one row per layer, MODEL@layer{i} (i = 0 the embeddings ... L the "
        "model's output), each layer's residual stream read through the final norm and the "
        "unembedding, from the same forward pass",
    )
    score.add_argument(
        "--save-token-logprobs", action="store_true",
        help="also store every scored token's log-prob (float32, ragged with per-text offsets; "
        "see docs/store.md)",
    )
    score.add_argument(
        "--chat-template", action="store_true",
        help="score each continuation as the assistant's reply to its context (the user turn), "
        "through the model's own chat template; only the assistant turn's tokens are scored",
    )
    score.add_argument(
        "--pmi", action="store_true",
        help="store log p(continuation | context) - log p(continuation), each continuation "
        "scored with and without its context (pointwise mutual information; docs/method.md)",
    )
    add_compile_cache_option(score)
    score.add_argument("--quiet", action="store_true", help="no progress bars")
    score.set_defaults(func=run_score)

    info = subparsers.add_parser("info", help="summarise a store")
    info.add_argument("store")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.add_argument(
        "--verify", action="store_true",
        help="check every row's checksum and the settings' own; list what is damaged or "
        "altered and exit 1 if anything is",
    )
    info.set_defaults(func=run_info)

    chunk = subparsers.add_parser(
        "chunk",
        help="cut raw documents into a JSONL text set (the paper's rule)",
        description="UTF-8-safe chunks of at most --max-bytes bytes; only chunks over "
        "--min-bytes bytes are kept. Each input file is one document.",
    )
    chunk.add_argument("documents", nargs="+", help="text files, one document each")
    chunk.add_argument("--out", required=True, help="JSONL file to write")
    chunk.add_argument(
        "--max-bytes", type=int_at_least(4), default=1024, help="bytes per chunk at most (default: %(default)s)"
    )
    chunk.add_argument(
        "--min-bytes", type=int_at_least(0), default=256,
        help="keep only chunks of more bytes than this (default: %(default)s)",
    )
    chunk.set_defaults(func=run_chunk)


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _size(text: str) -> int:
    """``200G``, ``500M``, ``1.5T`` or plain bytes."""
    number, unit = text.strip().upper().rstrip("B"), ""
    if number and number[-1] in _UNITS:
        number, unit = number[:-1], number[-1]
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 200G or 500M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be positive")
    return int(value)


def add_compile_cache_option(parser: argparse.ArgumentParser) -> None:
    """``--compile-cache DIR|none`` for a command that compiles scorers."""
    parser.add_argument(
        "--compile-cache", metavar="DIR",
        help="XLA's persistent compilation cache, shared by every process and run that uses DIR: "
        "same-shaped programs are compiled once (default: ~/.cache/jaxmap/xla, or $JAXMAP_CACHE/xla; "
        "'none' turns it off)",
    )


def use_compile_cache(args: argparse.Namespace) -> None:
    """Turn on the cache ``--compile-cache`` names, before the command's first compilation."""
    if args.compile_cache != "none":
        from .. import compile_cache

        compile_cache.enable(args.compile_cache)


def run_score(args: argparse.Namespace) -> int:
    use_compile_cache(args)
    if args.coordinator or args.num_processes or args.process_id is not None or args.distributed:
        from . import interrupts

        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        interrupts.reclaim()  # JAX's preemption notifier took SIGTERM
        distributed.on_forced_stop(_forced_stop)
    return _score(args)


def _forced_stop(error: BaseException) -> None:
    """How a multi-host run's watchdog ends this process when another one failed: the line the
    command would print (:func:`jaxmap.distributed.together`)."""
    from . import error_line, interrupts

    if isinstance(error, KeyboardInterrupt):
        interrupts.leave("score", error)
    print(error_line("score", error), file=sys.stderr)
    distributed.exit_now(2)


@distributed.together
def _score(args: argparse.Namespace) -> int:
    """The job, with every process of a multi-host run stopping together on a failure."""
    from ..jobs import score_job
    from ..outputs import refuse_inputs
    from ..scoring_options import ScoringOptions

    refuse_inputs(args.out, [args.texts, *(m for m in args.models if os.path.isfile(m))])
    options = ScoringOptions(
        dtype=args.dtype, bos_policy=args.bos_policy, batch_tokens=args.batch_tokens,
        long_texts=args.long_texts, stride=args.stride, packing=args.packing,
        attention=args.attention, logprob=args.logprob_kernel, logit_lens=args.logit_lens,
        keep_token_logprobs=args.save_token_logprobs, chat_template=args.chat_template, pmi=args.pmi,
    )

    first = distributed.process_index() == 0
    summary = score_job(
        args.models, args.texts, out=args.out, progress=not args.quiet and first,
        cache_dir=args.cache_dir, shard=args.shard, shard_by=args.shard_by, mesh=args.mesh,
        delete_after=args.delete_after, disk_budget=args.disk_budget,
        report=lambda line: print(line, file=sys.stderr), options=options,
    )
    if first:
        for line in summary.lines():
            print(line)
    # 1: the job ran to the end but some models failed (2 is kept for errors that stop a job).
    return 1 if summary.failures else 0


def run_info(args: argparse.Namespace) -> int:
    from ..store import open_store, verify_rows

    if args.verify:
        problems = verify_rows(args.store)
        for where, model, problem in problems:
            print(f"{args.store}: {problem}" if where == "store" else f"{args.store}: {where} ({model}): {problem}")
        altered = [p for p in problems if p[0] == "store"]
        damaged = [p for p in problems if p[0] != "store" and not p[2].startswith("no checksum")]
        if altered:
            print(
                f"{args.store}: the store was altered after jaxmap wrote it; restore it from a "
                "copy or score into a new store", file=sys.stderr,
            )
            return 1
        if damaged:
            print(
                f"{args.store}: {len(damaged)} damaged row(s); remove them with "
                f"`jaxmap drop {args.store} MODEL...` and score them again", file=sys.stderr,
            )
            return 1
        print(f"{args.store}: every checksum matches")
    store = open_store(args.store)
    rows = []
    for index, (model, meta) in enumerate(zip(store.models, store.model_meta)):
        rows.append(
            {
                "model": model,
                "architecture": meta.get("architecture"),
                "dtype": meta.get("dtype"),
                "bos_policy": meta.get("bos_policy"),
                "revision": meta.get("revision"),
                "mean_loglik": float(store.loglik[index].mean()),
                "scored_tokens": int(store.ntokens[index].sum()),
                "truncated_texts": int(store.truncated[index].sum()),
                "tokens_per_second": meta.get("tokens_per_second"),
                **({"greedy_texts": int(store.is_greedy[index].sum())} if store.contexts else {}),
            }
        )
    if args.json:
        json.dump(
            {"path": str(store.path), "texts": len(store.text_ids),
             "texts_with_context": sum(1 for c in store.contexts if c),
             "values": store.settings.get("values", "loglik"),
             "chat_template": store.settings.get("chat_template", "none"),
             "text_fingerprint": store.text_fingerprint, "models": rows},
            sys.stdout, indent=2,
        )
        print()
        return 0
    print(f"store      {store.path}")
    print(f"texts      {len(store.text_ids)} (fingerprint {store.text_fingerprint[:16]}, "
          f"mean {np.mean(store.text_bytes):.0f} bytes)")
    if store.contexts:
        values = "log p(y | x) - log p(y) (PMI)" if store.settings.get("values") == "pmi" else "log p(y | x)"
        chat = ", through each model's chat template" if store.settings.get("chat_template") == "tokenizer" else ""
        print(f"contexts   {sum(1 for c in store.contexts if c)} texts have one; values are {values}{chat}")
    print(f"models     {len(store.models)}")
    for row in rows:
        speed = row["tokens_per_second"]
        print(
            f"  {row['model']}  [{row['architecture']}, {row['dtype']}, {row['bos_policy']}]  "
            f"mean ℓ {row['mean_loglik']:.2f} nats, {row['scored_tokens']} tokens, "
            f"{row['truncated_texts']} truncated"
            + (f", {row['greedy_texts']} greedy" if "greedy_texts" in row else "")
            + (f", {speed:.0f} tok/s" if speed else "")
        )
    _print_adaptive(store.path)
    return 0


def _print_adaptive(path) -> None:
    """For a round store of ``jaxmap add --target-se``: each model's achieved SE."""
    from ..adaptive import read_adaptive_state

    state = read_adaptive_state(path)
    if not state:
        return
    print(f"adaptive   target SE {state.get('target_se')} {state.get('unit')} on the "
          f"{state.get('k')} nearest of {state.get('map')}")
    for model, entry in state.get("models", {}).items():
        reached = entry.get("nearest_se")
        se = f"{reached:.4g}" if reached is not None else "pending"
        print(f"  {model}  SE {se} after {len(entry.get('draws', []))} draws on "
              f"{entry.get('texts', '?')} texts ({entry.get('reason') or 'not finished'})")


def _read_document(path: str) -> str:
    from ..errors import TextSetError
    from ..texts import unstorable

    if Path(path).is_dir():
        raise TextSetError(f"{path}: is a directory, not a text file")
    try:
        document = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TextSetError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except FileNotFoundError:
        raise TextSetError(f"{path}: no such file") from None
    except OSError as error:
        raise TextSetError(f"{path}: cannot read ({error.strerror or error})") from None
    problem = unstorable(document)
    if problem:
        raise TextSetError(f"{path}: {problem} (is it a binary file?)")
    return document


def run_chunk(args: argparse.Namespace) -> int:
    """Cut each document into chunks; ``id`` is ``NAME:PIECE``, NAME the file name when the
    documents' names differ, else the path as given."""
    from ..errors import TextSetError
    from ..outputs import atomic_output, check_outputs
    from ..texts import chunk_document

    check_outputs([args.out], args.documents)
    if args.min_bytes >= args.max_bytes:
        raise TextSetError(
            f"--min-bytes {args.min_bytes} leaves no chunk of at most --max-bytes {args.max_bytes} bytes"
        )
    names = [Path(path).name for path in args.documents]
    if len(set(names)) < len(names):
        names = list(args.documents)
    if len(set(map(os.path.realpath, args.documents))) < len(args.documents):
        raise TextSetError("a document is given twice; its chunks would repeat")
    count = 0
    with atomic_output(args.out, args.documents) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        for path, name in zip(args.documents, names):
            document = _read_document(path)
            for piece, text in enumerate(
                chunk_document(document, max_bytes=args.max_bytes, min_bytes=args.min_bytes)
            ):
                record = {"id": f"{name}:{piece}", "text": text, "source": str(path)}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        if not count:
            # An empty file would only fail later, as a text set with no texts.
            shown = ", ".join(args.documents[:3]) + (", ..." if len(args.documents) > 3 else "")
            raise TextSetError(
                f"{shown}: no chunk of more than --min-bytes {args.min_bytes} bytes; "
                f"{args.out} was not written"
            )
    print(f"{args.out}: {count} chunks")
    return 0
