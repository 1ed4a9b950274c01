"""Command line: ``sqret <command>`` or ``python -m sqret <command>``."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import main

    return main(seed=args.seed)


def _backends(args: argparse.Namespace) -> int:
    from . import backends

    for b in backends():
        state = "available" if b.available else f"unavailable: {b.reason}"
        print(f"{b.name:12s} {state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sqret", description="Deep product quantization and retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="PQ on the bundled digits, beside FAISS IndexPQ")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    sub.add_parser("backends", help="list the op backends and why any is unavailable").set_defaults(func=_backends)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
