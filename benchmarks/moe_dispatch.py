"""Dense vs grouped mixture-of-experts dispatch (jaxmap.models.decoder): ms per forward of a
stack of random MoE MLP layers (x = x + moe(x), router and experts as the decoder holds them),
and the expert matmuls' FLOPs of each dispatch.

    python benchmarks/moe_dispatch.py            # both shapes below, float32, this backend

"dense" runs every expert on every token; "grouped" sorts the (token, expert) assignments by
expert and runs lax.ragged_dot, k experts per token. The largest |difference| between the two
outputs is printed as well (float32 rounding only).
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmap.models import decoder

# name: (hidden, experts, top k, expert width, layers, tokens)
SHAPES = {
    "small (parity-test size)": (64, 4, 2, 48, 2, 128),
    "mixtral-shaped, scaled down, 128 tokens": (512, 8, 2, 1024, 4, 128),
    "mixtral-shaped, scaled down": (512, 8, 2, 1024, 4, 512),
}


def config(hidden: int, experts: int, k: int, width: int, layers: int) -> decoder.DecoderConfig:
    return decoder.DecoderConfig(
        vocab_size=8, hidden_size=hidden, num_layers=layers, num_heads=1, num_kv_heads=1,
        head_dim=hidden, intermediate_size=width, max_positions=8, norm="rms", norm_eps=1e-5,
        activation="silu", gated_mlp=True, position="learned", attn_scale=1.0, tie_embeddings=False,
        num_experts=experts, experts_per_token=k, expert_intermediate_size=width,
        normalize_expert_weights=True,
    )


def params(cfg: decoder.DecoderConfig, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    d, e, w = cfg.hidden_size, cfg.num_experts, cfg.expert_intermediate_size

    def normal(*shape, fan_in):
        return jnp.asarray(rng.standard_normal(shape, np.float32) / np.sqrt(fan_in))

    return [
        {
            "router": {"kernel": normal(d, e, fan_in=d)},
            "experts": {
                "gate": normal(e, d, w, fan_in=d), "up": normal(e, d, w, fan_in=d),
                "down": normal(e, w, d, fan_in=w),
            },
        }
        for _ in range(cfg.num_layers)
    ]


def ragged_dot_experts(x, layer, cfg):
    """The grouped dispatch with lax.ragged_dot (not used by jaxmap: on CPU it lowers to a
    masked dense matmul over every expert)."""
    experts, k = layer["experts"], cfg.experts_per_token
    flat = x.reshape(-1, x.shape[-1])
    top, chosen = decoder._route(flat, layer["router"], cfg)
    assigned = chosen.reshape(-1)
    order = jnp.argsort(assigned, stable=True)
    token = order // k
    sizes = jnp.bincount(assigned, length=cfg.num_experts).astype(jnp.int32)
    rows = flat[token]
    gate = jax.lax.ragged_dot(rows, experts["gate"], sizes)
    up = jax.lax.ragged_dot(rows, experts["up"], sizes)
    hidden = jax.nn.silu(gate) * up * top.reshape(-1)[order][:, None]
    down = jax.lax.ragged_dot(hidden, experts["down"], sizes)
    return jnp.zeros(flat.shape, jnp.float32).at[token].add(down).reshape(x.shape)


DISPATCHES = {
    "dense": decoder._dense_experts,
    "grouped": decoder._grouped_experts,
    "ragged_dot": ragged_dot_experts,
}


def forward(dispatch: str, cfg: decoder.DecoderConfig):
    experts = DISPATCHES[dispatch]

    @jax.jit
    def run(x, layers):
        for layer in layers:
            x = x + experts(x, layer, cfg)
        return x

    return run


def flops(dispatch: str, cfg: decoder.DecoderConfig, tokens: int) -> int:
    """Expert matmul FLOPs of one forward as executed (2 per multiply-add; router, gathers and
    adds left out): dense and ragged_dot (on CPU) tokens * num_experts rows, grouped
    decoder.moe_rows (k per token plus tile padding)."""
    per_row = 2 * 3 * cfg.hidden_size * cfg.expert_intermediate_size
    rows = decoder.moe_rows(tokens, cfg) if dispatch == "grouped" else tokens * cfg.num_experts
    return cfg.num_layers * rows * per_row


def timed(run, *args, repeats: int) -> float:
    run(*args).block_until_ready()
    best = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(*args).block_until_ready()
        best.append(time.perf_counter() - start)
    return 1000 * float(np.median(best))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {machine}")
    print("| shape | tokens | dispatch | ms / forward (median) | expert GFLOPs executed "
          "| sparse GFLOPs (k/token) | max abs diff vs dense | rule picks |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (hidden, experts, k, width, layers, tokens) in SHAPES.items():
        cfg = config(hidden, experts, k, width, layers)
        layer_params = params(cfg)
        x = jnp.asarray(np.random.default_rng(1).standard_normal((1, tokens, hidden), np.float32))
        outputs = {}
        sparse = cfg.num_layers * tokens * k * 6 * hidden * width / 1e9
        picked = decoder.choose_moe_dispatch(tokens, cfg)
        for dispatch in DISPATCHES:
            run = forward(dispatch, cfg)
            outputs[dispatch] = np.asarray(run(x, layer_params))
            ms = timed(run, x, layer_params, repeats=args.repeats)
            gflops = flops(dispatch, cfg, tokens) / 1e9
            diff = float(np.max(np.abs(outputs[dispatch] - outputs["dense"])))
            print(
                f"| {name}: D={hidden} E={experts} k={k} I={width} L={layers} | {tokens} "
                f"| {dispatch} | {ms:.2f} | {gflops:.3f} | {sparse:.3f} | {diff:.2e} "
                f"| {picked} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
