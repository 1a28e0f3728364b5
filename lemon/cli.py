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
    sub.add_parser("info", help="what this install can run: the backends, and what lemon's C++ extension "
                                "was built with")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(seed=args.seed)
    if args.command == "info":
        print(info())
        return 0
    return 2


def info() -> str:
    """Backends and build, in a few lines (`lemon info`; the demo prints its first line)."""
    import torch

    from . import __version__, native
    from .backends import available_backends

    lines = [f"lemon {__version__}: backends available here: {', '.join(available_backends())} "
             f"(torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
             f"{', CUDA ' + torch.version.cuda if torch.cuda.is_available() else ', no GPU'})"]
    if native.built():
        build = native.build_info()
        lines.append(f"C++ extension: built; CPU loops for {build['cpu_isa']} (this CPU runs "
                     f"{', '.join(build['cpu_isas'])}); CUDA executor {'built' if build['cuda'] else 'not built'}")
    else:
        lines.append(f"C++ extension: not available ({native.extension()}); to build it, {native.BUILD_HINT}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
