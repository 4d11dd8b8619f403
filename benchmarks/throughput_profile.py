"""Where jaxmap's scoring time goes, for the profile-driven account of its speed.

Splits one scoring pass into: weight load, tokenization, compilation, and per batch the full
jitted scoring function (``jaxmap.engine.token_log_likelihoods``) against its two halves timed
apart: the decoder alone (``hidden_states``) and the fused vocab-tiled log-prob kernel alone on
the decoder's output. A full-logits ``log_softmax`` variant of the last step shows what the
tiling costs or saves. ``engine_seconds`` (``score_tokens`` end to end) minus the sum of the
per-batch scoring calls is the host-side overhead (padding, transfers, summing).

Standalone::

    python benchmarks/throughput_profile.py [--model REF] [--texts FILE.jsonl] [--dtype bfloat16]
        [--trace /tmp/jaxmap-trace]

``--trace`` also writes a ``jax.profiler`` trace of one ``score_tokens`` pass (TensorBoard or
Perfetto). This reaches into jaxmap's engine internals, so it follows them when they change.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from throughput_workload import ModelShape, load_bench_texts, resolve_model, shape_of


def _best(function, *args, repeats: int) -> float:
    """Best-of-``repeats`` seconds of an already compiled jitted call."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function(*args).block_until_ready()
        best = min(best, time.perf_counter() - started)
    return best


def shape_matmuls(shape: ModelShape, positions: int, dtype: str, repeats: int) -> list[dict]:
    """GFLOP/s of the model's own matmuls on ``positions`` rows, the ceiling at these shapes.

    The square matmul peak is not reachable with a 576-wide hidden size; this shows how much of
    it each projection can reach by itself (weights in ``dtype``, float32 accumulation).
    """
    import jax
    import jax.numpy as jnp

    d = shape.hidden_size
    attn, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    projections = {
        "q/o": (d, attn),
        "k/v": (d, kv),
        "mlp up/gate": (d, shape.intermediate_size),
        "mlp down": (shape.intermediate_size, d),
        "unembedding tile 8192": (d, 8192),
    }
    weight_dtype = jnp.dtype(dtype)
    multiply = jax.jit(
        lambda x, w: jnp.matmul(x.astype(w.dtype), w, preferred_element_type=jnp.float32)
    )
    key = jax.random.PRNGKey(0)
    results = []
    for name, (inner, outer) in projections.items():
        x = jax.random.normal(key, (positions, inner), jnp.float32)
        w = jax.random.normal(key, (inner, outer), jnp.float32).astype(weight_dtype)
        multiply(x, w).block_until_ready()
        seconds = _best(multiply, x, w, repeats=repeats)
        results.append(
            {
                "matmul": name,
                "shape": [positions, inner, outer],
                "gflops_per_second": 2 * positions * inner * outer / seconds / 1e9,
            }
        )
    return results


def profile_jaxmap(
    directory: Path,
    texts,
    dtype: str,
    batch_tokens: int,
    repeats: int = 3,
    trace_dir: Path | None = None,
) -> dict:
    """Time each stage of jaxmap scoring ``texts`` with the model in ``directory``."""
    import jax
    import jax.numpy as jnp

    from jaxmap.batching import plan_batches
    from jaxmap.engine import default_batch_tokens, load_model, score_tokens, token_log_likelihoods
    from jaxmap.kernels.fused_logprob import DEFAULT_TILE, token_logprobs
    from jaxmap.models import hidden_states, unembedding
    from jaxmap.tokenization import tokenize

    shape: ModelShape = shape_of(directory)
    started = time.perf_counter()
    model = load_model(str(directory), dtype=dtype)
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    tokens = tokenize(texts, model.tokenizer, "paper")
    tokenize_seconds = time.perf_counter() - started

    config, params = model.config, model.params
    n_ctx = config.max_positions
    scored = np.maximum(np.minimum(tokens.lengths, n_ctx) - 1, 0)
    batch_tokens = batch_tokens or default_batch_tokens()
    plan = plan_batches(scored, batch_tokens, max_length=n_ctx - 1)
    weights = unembedding(params, config)
    decoder = jax.jit(lambda p, t: hidden_states(p, t, config)[0])
    fused = jax.jit(
        lambda h, w, t: token_logprobs(
            h, w, t, tile=DEFAULT_TILE, softcap=config.final_logit_softcap
        )
    )

    def full_logits(h, w, t):
        logits = jnp.einsum("nd,vd->nv", h.astype(w.dtype), w, preferred_element_type=jnp.float32)
        if config.final_logit_softcap:
            cap = config.final_logit_softcap
            logits = cap * jnp.tanh(logits / cap)
        return jnp.take_along_axis(jax.nn.log_softmax(logits), t[:, None], axis=1)[:, 0]

    naive = jax.jit(full_logits)

    batches, compile_seconds = [], 0.0
    seen_shapes: set[tuple[int, int]] = set()
    for batch in plan.batches:
        padded = np.zeros((batch.rows, batch.length + 1), np.int32)
        for row, index in enumerate(batch.indices):
            sequence = tokens[index][:n_ctx]
            padded[row, : len(sequence)] = sequence
        padded = jnp.asarray(padded)
        inputs, targets = padded[:, :-1], padded[:, 1:].reshape(-1)
        if (batch.rows, batch.length) not in seen_shapes:
            seen_shapes.add((batch.rows, batch.length))
            started = time.perf_counter()
            token_log_likelihoods(params, padded, config).block_until_ready()
            compile_seconds += time.perf_counter() - started
        hidden = decoder(params, inputs).block_until_ready()
        flat = hidden.reshape(-1, hidden.shape[-1])
        fused(flat, weights, targets).block_until_ready()
        naive(flat, weights, targets).block_until_ready()
        positions = batch.rows * batch.length
        unembedding_flops = 2 * shape.unembedding_weights * positions
        batches.append(
            {
                "rows": batch.rows,
                "length": batch.length,
                "texts": len(batch.indices),
                "real_positions": int(scored[batch.indices].sum()),
                "padded_positions": positions,
                "score_seconds": _best(
                    token_log_likelihoods, params, padded, config, repeats=repeats
                ),
                "decoder_seconds": _best(decoder, params, inputs, repeats=repeats),
                "logprob_seconds": _best(fused, flat, weights, targets, repeats=repeats),
                "logprob_full_logits_seconds": _best(
                    naive, flat, weights, targets, repeats=repeats
                ),
                "decoder_flops": batch.rows * shape.sequence_flops(batch.length)
                - unembedding_flops,
                "logprob_flops": unembedding_flops,
            }
        )

    engine_seconds = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        score_tokens(model, tokens, batch_tokens, progress=False)
        engine_seconds = min(engine_seconds, time.perf_counter() - started)
    if trace_dir is not None:
        with jax.profiler.trace(str(trace_dir)):
            score_tokens(model, tokens, batch_tokens, progress=False)

    def total(key: str) -> float:
        return float(sum(b[key] for b in batches))

    score_total = total("score_seconds")
    decoder_total, logprob_total = total("decoder_seconds"), total("logprob_seconds")
    largest = max(b["padded_positions"] for b in batches)
    return {
        "dtype": dtype,
        "batch_tokens": batch_tokens,
        "texts": len(tokens),
        "real_positions": int(scored.sum()),
        "padding_fraction": plan.padding_fraction,
        "load_seconds": load_seconds,
        "tokenize_seconds": tokenize_seconds,
        "compile_seconds_first_calls": compile_seconds,
        "engine_seconds": engine_seconds,
        "score_calls_seconds": score_total,
        "host_overhead_seconds": engine_seconds - score_total,
        "decoder_seconds": decoder_total,
        "logprob_seconds": logprob_total,
        "logprob_full_logits_seconds": total("logprob_full_logits_seconds"),
        "logprob_share_of_split": logprob_total / (decoder_total + logprob_total),
        "fusion_gain_seconds": decoder_total + logprob_total - score_total,
        "decoder_gflops_per_second": total("decoder_flops") / decoder_total / 1e9,
        "logprob_gflops_per_second": total("logprob_flops") / logprob_total / 1e9,
        "score_gflops_per_second_padded": (total("decoder_flops") + total("logprob_flops"))
        / score_total
        / 1e9,
        "shape_matmuls": shape_matmuls(shape, largest, dtype, repeats),
        "batches": batches,
        "trace_dir": str(trace_dir) if trace_dir else None,
        "note": "FLOP/s here count padded positions (the work the kernels actually do); "
        "every *_seconds is the best of the repeats; shape_matmuls multiply as many rows as "
        "the largest batch has positions.",
    }


def profile_markdown(profile: dict) -> list[str]:
    """A short markdown account of one profile."""
    lines = [
        f"### jaxmap profile ({profile['dtype']}, batch_tokens={profile['batch_tokens']}, "
        f"{profile['texts']} texts, {profile['real_positions']} scored tokens, padding "
        f"{100 * profile['padding_fraction']:.1f}%)",
        "",
        "| stage | seconds | note |",
        "|---|---|---|",
        f"| weight load | {profile['load_seconds']:.2f} | `load_model` |",
        f"| tokenization | {profile['tokenize_seconds']:.2f} | paper policy |",
        f"| compilation | {profile['compile_seconds_first_calls']:.2f} | "
        "first call per batch shape |",
        f"| score_tokens (engine) | {profile['engine_seconds']:.2f} | after compilation, "
        "padding and summing included |",
        f"| Σ scoring calls | {profile['score_calls_seconds']:.2f} | "
        f"{profile['score_gflops_per_second_padded']:.1f} GFLOP/s on padded positions |",
        f"| host overhead | {profile['host_overhead_seconds']:.2f} | engine − Σ scoring calls |",
        f"| Σ decoder only | {profile['decoder_seconds']:.2f} | "
        f"{profile['decoder_gflops_per_second']:.1f} GFLOP/s |",
        f"| Σ log-prob kernel only | {profile['logprob_seconds']:.2f} | "
        f"{profile['logprob_gflops_per_second']:.1f} GFLOP/s; "
        f"{100 * profile['logprob_share_of_split']:.0f}% of decoder + kernel |",
        f"| Σ full-logits log_softmax instead | {profile['logprob_full_logits_seconds']:.2f} | "
        "unfused reference for the kernel |",
        "",
        "The model's matmuls alone, "
        + ", ".join(
            f"{m['matmul']} {m['shape'][0]}×{m['shape'][1]}×{m['shape'][2]}: "
            f"{m['gflops_per_second']:.0f}"
            for m in profile["shape_matmuls"]
        )
        + " GFLOP/s.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", help="any jaxmap model reference (default: the packaged SmolLM2-135M)"
    )
    parser.add_argument("--texts", help="JSONL text set (default: the standard-library set)")
    parser.add_argument("--texts-count", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: the engine's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trace", type=Path, help="write a jax.profiler trace here")
    args = parser.parse_args()
    texts = load_bench_texts(args.texts, args.texts_count)
    model = resolve_model(args.model, texts)
    print(model.note)
    profile = profile_jaxmap(
        model.directory, texts, args.dtype, args.batch_tokens, args.repeats, args.trace
    )
    print("\n".join(profile_markdown(profile)))
    print(json.dumps({k: v for k, v in profile.items() if k != "batches"}, indent=2))


if __name__ == "__main__":
    main()
