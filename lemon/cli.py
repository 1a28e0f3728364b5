"""The `lemon` command. Start-up stays light: heavy imports happen inside subcommands."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="lemon", description="Lossless model expansion (LEMON).")
    parser.add_argument("--version", action="version", version=f"lemon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build small models of every supported family, expand them, "
                                       "and print how exactly the expanded models match")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(seed=args.seed)
    return 2


if __name__ == "__main__":
    sys.exit(main())
