"""``jaxmap plan``: what a scoring job will cost, before it runs."""

from __future__ import annotations

import argparse
import json

from . import int_at_least, positive_float


def register(subparsers) -> None:
    from ..scoring_options import DEFAULT_DTYPE

    plan = subparsers.add_parser(
        "plan",
        help="estimate a scoring job's memory, FLOPs, time and shard plan from the configs",
        description=(
            "From each MODEL's config alone (no weights): its parameters, weight and activation "
            "memory, the smallest model axis that fits a device, the FLOPs of scoring the text "
            "set and the time at a stated MFU; then device-hours, the makespan on --devices and "
            "the models of each shard, as `jaxmap score --shard I/N` would cut the list."
        ),
    )
    plan.add_argument("models", nargs="+", metavar="MODEL", help="as for `jaxmap score`")
    plan.add_argument("--texts", required=True, help="JSONL text set (a 'text' field per line)")
    plan.add_argument(
        "--devices", required=True, metavar="COUNTxKIND",
        help="the devices of the job, e.g. 8xH100 (kinds: h100, h200, a100, tpu-v5e, tpu-v5p, "
        "cpu, or one added with --device-spec)",
    )
    plan.add_argument(
        "--dtype", default=DEFAULT_DTYPE, choices=["float32", "bfloat16", "float16"],
        help="weight/matmul dtype of the job (default: %(default)s)",
    )
    plan.add_argument(
        "--batch-tokens", type=int_at_least(16),
        help="padded tokens per batch and device (default: the engine's for the device kind)",
    )
    plan.add_argument(
        "--mfu", type=positive_float,
        help="model FLOP utilisation to assume, in (0, 1] (default: measured in "
        "benchmarks/results for the device kind and dtype, else 0.4)",
    )
    plan.add_argument(
        "--device-spec", action="append", default=[], metavar="SPEC",
        help="add a device kind: name=KIND,flops=FLOPS,memory=BYTES[,fp32=FLOPS] (e.g. "
        "name=v6e,flops=918T,memory=32G) or a JSON file of such kinds; may be repeated",
    )
    plan.add_argument("--json", metavar="PATH", help="also write the plan as JSON to PATH")
    plan.add_argument("--cache-dir", help="cache of packaged GGUF models (default: ~/.cache/jaxmap)")
    plan.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    from ..outputs import atomic_output, check_outputs
    from ..planning import plan_job

    if args.json:
        check_outputs([args.json], [args.texts, *args.models])
    job = plan_job(
        args.models, args.texts, args.devices, dtype=args.dtype, batch_tokens=args.batch_tokens,
        mfu=args.mfu, device_specs=args.device_spec, cache_dir=args.cache_dir,
    )
    for line in job.lines():
        print(line)
    if args.json:
        with atomic_output(args.json, [args.texts]) as temporary:
            temporary.write_text(json.dumps(job.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0
