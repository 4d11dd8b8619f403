"""Dense against blockwise causal attention on this machine, at the batch shapes the engine
uses (a fixed budget of padded positions per batch), interleaved in one run.

    python benchmarks/bench_attention.py [--budget 2048] [--rounds 5] [--out results/NAME.md]

Heads as SmolLM2-135M (3 key/value heads, 3 query heads each, head_dim 64). Prints, per row
length, the best time of the dense path (in the query chunks jaxmap uses) and of the blockwise path at each block size shorter
than the row, and dense over the block size jaxmap picks (``block_size``); --out writes the
table as markdown.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp

from jaxmap.models.attention import (
    block_size, blockwise_attention, dense_attention, dense_query_chunks,
)


BLOCKS = (64, 128, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=2048, help="padded positions per batch")
    parser.add_argument("--lengths", default="32,64,128,256,512,1024,2048")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    kv_heads, group, head_dim = 3, 3, 64
    lines = [
        f"# Attention paths, {platform.node() or 'this machine'} ({jax.default_backend()}, "
        f"{jax.device_count()} device(s)), {args.budget} padded positions per batch",
        "",
        "| row length | rows | dense ms | blockwise ms, block 64 / 128 / 256 | jaxmap's block |"
        " dense / blockwise at it |",
        "|---|---|---|---|---|---|",
    ]
    for length in (int(x) for x in args.lengths.split(",")):
        rows = max(args.budget // length, 1)
        keys = jax.random.split(jax.random.key(length), 3)
        q = jax.random.normal(keys[0], (rows, length, kv_heads, group, head_dim))
        k = jax.random.normal(keys[1], (rows, length, kv_heads, head_dim))
        v = jax.random.normal(keys[2], (rows, length, kv_heads, head_dim))
        window = jnp.int32(0)
        chunks = dense_query_chunks(length)
        paths = {
            "dense": jax.jit(
                lambda q, k, v: dense_attention(q, k, v, window=window, query_chunks=chunks)
            )
        }
        for block in BLOCKS:
            if block < length:
                paths[block] = jax.jit(
                    lambda q, k, v, block=block: blockwise_attention(q, k, v, window=window, block=block)
                )
        for function in paths.values():
            function(q, k, v).block_until_ready()
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
        print(line, flush=True)
        lines.append(line)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
