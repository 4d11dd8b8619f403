"""The decoder's attention paths against each other on this machine, at the batch shapes the
engine uses (a fixed budget of padded positions per batch), interleaved in one run.

    python benchmarks/bench_attention.py [--budget 2048] [--rounds 5] [--out results/NAME.md]
    python benchmarks/bench_attention.py --paths dense,blockwise,xla_fused,pallas \
        --heads 8,4,64 --dtype bfloat16 --budget 16384        # on a GPU

Heads default to SmolLM2-135M's (3 key/value heads, 3 query heads each, head_dim 64); ``--heads
KV,G,HD`` sets others (8,4,64 is Llama-3.2-1B). Prints, per row length, the best time of the
dense path (in the query chunks jaxmap uses), of the blockwise path at each block size shorter
than the row, and dense over the block size jaxmap picks (``block_size``); each path of
``--paths`` beyond those two (``xla_fused``, ``pallas``) adds its time and its largest
difference from the dense path. --out writes the table as markdown.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp

from jaxmap.models.attention import (
    attend, block_size, blockwise_attention, dense_attention, dense_query_chunks,
)


BLOCKS = (64, 128, 256)
EXTRA_PATHS = ("xla_fused", "pallas")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=2048, help="padded positions per batch")
    parser.add_argument("--lengths", default="32,64,128,256,512,1024,2048")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--heads", default="3,3,64", help="key/value heads, query heads per key head, head_dim")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--paths", default="dense,blockwise",
        help=f"dense,blockwise and any of {','.join(EXTRA_PATHS)} (pallas runs in interpret mode on CPU)",
    )
    parser.add_argument("--out")
    args = parser.parse_args()
    kv_heads, group, head_dim = (int(x) for x in args.heads.split(","))
    extra = [path for path in args.paths.split(",") if path in EXTRA_PATHS]
    unknown = set(args.paths.split(",")) - {"dense", "blockwise", *EXTRA_PATHS}
    if unknown:
        parser.error(f"unknown path(s) {sorted(unknown)}")
    compute_dtype = jnp.dtype(args.dtype)
    header = "| row length | rows | dense ms | blockwise ms, block 64 / 128 / 256 | jaxmap's block | dense / blockwise at it |"
    rule = "|---|---|---|---|---|---|"
    for path in extra:
        header += f" {path} ms | {path} max \\|Δ\\| |"
        rule += "---|---|"
    lines = [
        f"# Attention paths, {platform.node() or 'this machine'} ({jax.default_backend()}, "
        f"{jax.devices()[0].device_kind}), {args.budget} padded positions per batch, "
        f"heads {kv_heads}×{group}, head_dim {head_dim}, {args.dtype} inputs",
        "",
        header,
        rule,
    ]
    for length in (int(x) for x in args.lengths.split(",")):
        rows = max(args.budget // length, 1)
        keys = jax.random.split(jax.random.key(length), 3)
        q = jax.random.normal(keys[0], (rows, length, kv_heads, group, head_dim)) * head_dim**-0.5
        k = jax.random.normal(keys[1], (rows, length, kv_heads, head_dim))
        v = jax.random.normal(keys[2], (rows, length, kv_heads, head_dim))
        window = jnp.int32(0)
        chunks = dense_query_chunks(length)
        paths = {
            "dense": jax.jit(
                lambda q, k, v: dense_attention(
                    q, k, v, window=window, query_chunks=chunks, compute_dtype=compute_dtype
                )
            )
        }
        for block in BLOCKS:
            if block < length:
                paths[block] = jax.jit(
                    lambda q, k, v, block=block: blockwise_attention(
                        q, k, v, window=window, block=block, compute_dtype=compute_dtype
                    )
                )
        for path in extra:
            paths[path] = jax.jit(
                lambda q, k, v, path=path: attend(
                    q, k, v, window=window, softcap=None, bias=None, compute_dtype=compute_dtype,
                    path=path,
                )
            )
        outputs = {name: function(q, k, v).block_until_ready() for name, function in paths.items()}
        best = {name: float("inf") for name in paths}
        for _ in range(args.rounds):
            for name, function in paths.items():
                started = time.perf_counter()
                function(q, k, v).block_until_ready()
                best[name] = min(best[name], time.perf_counter() - started)
        chosen = block_size(length)
        blockwise = " / ".join(
            f"{best[block] * 1e3:.1f}" if block in best else "—" for block in BLOCKS
        )
        ratio = f"{best['dense'] / best[chosen]:.2f}" if chosen in best else "—"
        line = (
            f"| {length} | {rows} | {best['dense'] * 1e3:.1f} | {blockwise} | {chosen} | {ratio} |"
        )
        for path in extra:
            difference = float(jnp.abs(outputs[path] - outputs["dense"]).max())
            line += f" {best[path] * 1e3:.1f} | {difference:.1e} |"
        print(line, flush=True)
        lines.append(line)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
