"""``jaxmap train``: train or fine-tune a model into a run directory of orbax checkpoints."""

from __future__ import annotations

import argparse

from . import int_at_least, positive_float


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a small model from scratch or fine-tune one; checkpoints form a trajectory",
        description=(
            "Train with AdamW (linear warmup, cosine decay, gradient clipping) on next-token "
            "cross-entropy over a JSONL text set, writing an orbax checkpoint every --save-every "
            "steps (and at step 0 and the last step) into --out/step_NNNNNNNN/. Each step "
            "directory is a model reference; `jaxmap score OUT` scores them all in step order."
        ),
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="fine-tune this model reference (its tokenizer is reused)")
    source.add_argument("--config", help="train from scratch: an HF config.json")
    source.add_argument(
        "--architecture",
        help="train from scratch: an architecture (class or model_type, e.g. llama, gpt2) at the size flags below",
    )
    train.add_argument("--tokenizer", help="from scratch: a directory with tokenizer.json (any HF tokenizer)")
    train.add_argument("--texts", required=True, help="JSONL text set to train on")
    train.add_argument("--out", required=True, help="run directory for the checkpoints")
    sizes = train.add_argument_group("model size (with --architecture)")
    sizes.add_argument("--hidden-size", type=int_at_least(1), default=64)
    sizes.add_argument("--layers", type=int_at_least(1), default=2)
    sizes.add_argument("--heads", type=int_at_least(1), default=4)
    sizes.add_argument("--kv-heads", type=int_at_least(1), help="default: --heads")
    sizes.add_argument("--intermediate-size", type=int_at_least(1), help="default: 4 × --hidden-size")
    sizes.add_argument("--context", type=int_at_least(2), default=256, help="maximum positions (default: %(default)s)")
    run = train.add_argument_group("optimisation")
    run.add_argument("--steps", type=int_at_least(1), default=200, help="default: %(default)s")
    run.add_argument("--batch-size", type=int_at_least(1), default=8, help="windows per step (default: %(default)s)")
    run.add_argument("--seq-len", type=int_at_least(1), default=64, help="tokens per window (default: %(default)s)")
    run.add_argument("--learning-rate", type=positive_float, default=3e-3, help="peak (default: %(default)s)")
    run.add_argument("--warmup-steps", type=int_at_least(0), default=20, help="default: %(default)s")
    run.add_argument("--weight-decay", type=float, default=0.01, help="AdamW, matrices only (default: %(default)s)")
    run.add_argument("--clip-norm", type=positive_float, default=1.0, help="global gradient norm (default: %(default)s)")
    run.add_argument("--save-every", type=int_at_least(1), default=50, help="checkpoint interval in steps (default: %(default)s)")
    run.add_argument("--seed", type=int_at_least(0), default=0, help="initialisation and batch order (default: %(default)s)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..training import TrainingError, scratch_config, train
    from ..tokenization import load_tokenizer

    hf_config = tokenizer = None
    if args.model is None:
        if args.tokenizer is None:
            raise TrainingError("training from scratch (--config or --architecture) needs --tokenizer DIR")
        tokenizer = load_tokenizer(args.tokenizer)
        if args.architecture:
            hf_config = scratch_config(
                args.architecture, tokenizer, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                intermediate_size=args.intermediate_size, max_position_embeddings=args.context,
            )
        else:
            hf_config = args.config
    result = train(
        args.texts, args.out, model=args.model, hf_config=hf_config, tokenizer=tokenizer,
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, clip_norm=args.clip_norm, save_every=args.save_every,
        seed=args.seed, progress=not args.quiet,
    )
    losses = result.losses
    print(
        f"{result.run_dir}: {len(result.checkpoints)} checkpoints ({result.checkpoints[0].name} … "
        f"{result.checkpoints[-1].name}), loss {losses[0]:.3f} → {losses[-1]:.3f} over {len(losses)} steps, "
        f"{result.seconds:.1f} s"
    )
    return 0
