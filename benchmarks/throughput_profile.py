"""Where jaxmap's scoring time goes, for the profile-driven account of its speed.

Splits one scoring pass into: weight load, tokenization, compilation, and per batch the full
jitted scoring function (``jaxmap.engine.token_log_likelihoods``) against its two halves timed
apart: the decoder alone (``hidden_states``) and the fused vocab-tiled log-prob kernel alone on
the decoder's output, and the attention alone as the decoder runs it (on random q/k/v of each
batch's shape, times the layer count). Batches follow the plan the engine runs (packed rows or
buckets). A full-logits ``log_softmax`` variant of the last step shows what the
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

    from jaxmap.engine import (
        _layout_batch, compiled_scorer, default_batch_tokens, load_model, plan_scoring,
        score_tokens,
    )
    from jaxmap.kernels.fused_logprob import DEFAULT_TILE, token_logprobs
    from jaxmap.models import hidden_states, unembedding
    from jaxmap.models.attention import attend, choose_path
    from jaxmap.models.decoder import alibi_bias
    from jaxmap.tokenization import tokenize

    shape: ModelShape = shape_of(directory)
    started = time.perf_counter()
    model = load_model(str(directory), dtype=dtype)
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    tokens = tokenize(texts, model.tokenizer, "paper")
    tokenize_seconds = time.perf_counter() - started

    config, params = model.config, model.params
    batch_tokens = batch_tokens or default_batch_tokens()
    # The plan the engine runs (packed rows or buckets, whichever it estimates cheaper).
    pieces, choice = plan_scoring(config, tokens.lengths, batch_tokens)
    plan = choice.plan
    weights = unembedding(params, config)
    decoder = jax.jit(lambda p, t, extra: hidden_states(p, t, config, **extra)[0])
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
    compute_dtype = jnp.dtype(dtype)

    def attention_alone(q, k, v, segment_ids):
        """One layer's attention as the decoder runs it (the first layer's window)."""
        return attend(
            q, k, v, window=jnp.int32(config.windows[0]), softcap=config.attn_logit_softcap,
            bias=alibi_bias(config), compute_dtype=compute_dtype, static_window=config.windows[0],
            segment_ids=segment_ids,
            path=choose_path(config.attention, q.shape[1], config.windows,
                             config.attn_logit_softcap, config.position == "alibi",
                             compute_dtype, packed=segment_ids is not None),
        )

    attention = jax.jit(attention_alone)
    batches, compile_seconds = [], 0.0
    for batch in plan.batches:
        arrays = {
            name: jnp.asarray(values)
            for name, values in _layout_batch(tokens, pieces, batch, batch.rows).items()
        }
        padded = arrays.pop("tokens")
        inputs, targets = padded[:, :-1], padded[:, 1:].reshape(-1)
        scorer, seconds = compiled_scorer(
            params, config, batch.rows, batch.length, model.mesh, packed=plan.packed
        )
        compile_seconds += seconds
        hidden = decoder(params, inputs, arrays).block_until_ready()
        flat = hidden.reshape(-1, hidden.shape[-1])
        fused(flat, weights, targets).block_until_ready()
        naive(flat, weights, targets).block_until_ready()
        keys = jax.random.split(jax.random.key(batch.length), 3)
        group = config.num_heads // config.num_kv_heads
        heads = (batch.rows, batch.length, config.num_kv_heads)
        q = jax.random.normal(keys[0], (*heads, group, config.head_dim)) * config.attn_scale
        k = jax.random.normal(keys[1], (*heads, config.head_dim))
        v = jax.random.normal(keys[2], (*heads, config.head_dim))
        segment_ids = arrays.get("segment_ids")
        attention(q, k, v, segment_ids).block_until_ready()
        positions = batch.rows * batch.length
        unembedding_flops = 2 * shape.unembedding_weights * positions
        batches.append(
            {
                "rows": batch.rows,
                "length": batch.length,
                "pieces": len(batch.indices),
                "real_positions": int(pieces.scored[batch.indices].sum()),
                "padded_positions": positions,
                "score_seconds": _best(
                    lambda: scorer(params, padded, **arrays), repeats=repeats
                ),
                "decoder_seconds": _best(decoder, params, inputs, arrays, repeats=repeats),
                "attention_seconds": config.num_layers
                * _best(attention, q, k, v, segment_ids, repeats=repeats),
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
    attention_total = total("attention_seconds")
    largest = max(b["padded_positions"] for b in batches)
    return {
        "dtype": dtype,
        "batch_tokens": batch_tokens,
        "texts": len(tokens),
        "real_positions": int(pieces.scored.sum()),
        "padding_fraction": plan.padding_fraction,
        "batching": choice.name,
        "load_seconds": load_seconds,
        "tokenize_seconds": tokenize_seconds,
        "compile_seconds_first_calls": compile_seconds,
        "engine_seconds": engine_seconds,
        "score_calls_seconds": score_total,
        "host_overhead_seconds": engine_seconds - score_total,
        "decoder_seconds": decoder_total,
        "logprob_seconds": logprob_total,
        "attention_seconds": attention_total,
        "attention_share_of_decoder": attention_total / decoder_total,
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
        f"{100 * profile['padding_fraction']:.1f}%, {profile.get('batching', 'buckets')})",
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
        f"| Σ attention alone × layers | {profile['attention_seconds']:.2f} | "
        f"{100 * profile['attention_share_of_decoder']:.0f}% of the decoder: the path the "
        "decoder picks, on random q/k/v of each batch's shape and segments |",
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
