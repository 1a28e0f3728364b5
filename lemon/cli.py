"""The `lemon` command. Start-up stays light: heavy imports happen inside subcommands."""
from __future__ import annotations

import argparse
import re
import sys


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="lemon", description="Lossless model expansion (LEMON).")
    parser.add_argument("--version", action="version", version=f"lemon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build small models of every supported family, expand them, "
                                       "and print how exactly the expanded models match")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random models and of the noise (default 0)")
    sub.add_parser("info", help="what this install can run: the backends, and what lemon's C++ extension "
                                "was built with")
    expand = sub.add_parser("expand", help="expand a checkpoint directory (config.json + safetensors) into a new "
                                           "one, streaming tensor by tensor")
    expand.add_argument("source", metavar="SRC_DIR", help="the checkpoint to expand: config.json + *.safetensors, "
                                                          "as save_pretrained writes it; only read")
    expand.add_argument("destination", metavar="DST_DIR", help="where the expanded checkpoint goes (a new or empty "
                                                               "directory; written beside it, renamed at the end)")
    for size in ("hidden-size", "intermediate-size", "num-attention-heads", "num-key-value-heads",
                 "num-hidden-layers"):
        expand.add_argument(f"--{size}", type=int, default=None, help="target size (default: unchanged)")
    expand.add_argument("--layer-positions", type=_int_list, default=None, metavar="I,J,...",
                        help="target indices of the inserted layers (default: spread evenly); without "
                             "--num-hidden-layers, each index adds one layer")
    expand.add_argument("--seed", type=int, default=0,
                        help="seed of the symmetry-breaking noise: the same seed gives the same bits (default 0)")
    expand.add_argument("--noise-std", type=float, default=None,
                        help="symmetry-breaking noise scale (default: the config's initializer_range; 0: none)")
    expand.add_argument("--backend", default="auto", help="executor: auto, reference, cpp, triton, cuda")
    expand.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where tensors are expanded")
    expand.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                        help="cast the source's floating tensors to this before expanding (default: as stored)")
    expand.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB, 500MB, 2GiB")
    expand.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty DST_DIR (only once the new checkpoint is complete)")
    direct = expand.add_mutually_exclusive_group()
    direct.add_argument("--direct-io", dest="direct_io", action="store_true", default=None,
                        help="write with O_DIRECT, past the page cache (default: where the filesystem takes it)")
    direct.add_argument("--no-direct-io", dest="direct_io", action="store_false",
                        help="write through the page cache")
    expand.add_argument("--dry-run", action="store_true",
                        help="print the plan, the output's size, a time estimate and what the real run would "
                             "refuse (exit status 2 then); write nothing")
    progress = expand.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a bar")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show a bar")
    check = sub.add_parser("verify", help="run a checkpoint and its expansion on the same inputs and compare "
                                          "outputs and hidden states; exit status 1 past the tolerance")
    check.add_argument("source", metavar="SRC_DIR", help="the source checkpoint (or, after expansions in a row, "
                                                         "any earlier one)")
    check.add_argument("destination", metavar="DST_DIR", help="its expansion, as lemon expand wrote it")
    check.add_argument("--tolerance", type=float, default=None,
                       help="largest relative max output difference accepted (default: 1e-5 when DST_DIR's "
                            "weights are fp32, 5e-2 when they are 16-bit)")
    check.add_argument("--token-ids", type=_int_list, default=None, metavar="I,J,...",
                       help="token ids to run (default: random ones)")
    check.add_argument("--image", default=None, help="an image to run (vision models; uses SRC_DIR's image processor)")
    from .recipe import add_arguments

    add_arguments(sub.add_parser("train-demo", help="measure LEMON's compute saving here: train a small GPT-2 on "
                                                    "the standard library's source, expand it, train it with the "
                                                    "LEMON schedule, against the large model from scratch"))
    args = parser.parse_args(argv)
    if args.command == "train-demo":
        from .recipe import run_from_args
        return run_from_args(args)
    if args.command in ("expand", "verify"):
        return _checkpoint_command(args)
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(seed=args.seed)
    if args.command == "info":
        print(info())
        return 0
    return 2


def _plain_warnings() -> None:
    """A warning from lemon is one line on stderr, as the command's other messages: in a command,
    the line of code it would name (the console script) says nothing to the user."""
    import warnings

    default = warnings.formatwarning

    def plain(message, category, filename, lineno, line=None):
        text = str(message)
        return f"{text}\n" if text.startswith("lemon") else default(message, category, filename, lineno, line)

    warnings.formatwarning = plain


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _read_ahead(directory: str, share: float = 0.25) -> None:
    """Read the source's shards into the page cache on a background thread, up to ``share`` of
    the available memory, while Python imports torch and transformers (seconds in which the disk
    and one core are idle): the streaming then finds the source there instead of reading it from
    a disk that is busy with the output. Only reads; a source that is not a checkpoint is refused
    later. (``posix_fadvise(WILLNEED)`` would be the hint for this, but the kernel caps it at a
    few MB per call.)"""
    import glob
    import os
    import threading

    try:
        budget = share * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return

    def read() -> None:
        left = budget
        chunk = bytearray(8 << 20)
        for path in sorted(glob.glob(os.path.join(glob.escape(directory), "*.safetensors"))):
            try:
                with open(path, "rb", buffering=0) as f:
                    while left > 0:
                        got = f.readinto(chunk)
                        if not got:
                            break
                        left -= got
            except OSError:
                continue
            if left <= 0:
                return

    threading.Thread(target=read, name="lemon-read-ahead", daemon=True).start()


def _checkpoint_command(args) -> int:
    """`lemon expand` / `lemon verify`: a refused input is one line on stderr and exit status 2."""
    if args.command == "expand" and not args.dry_run:
        import torch  # noqa: F401  (first: its libraries are most of the imports' own disk reads)

        _read_ahead(args.source)  # overlaps the transformers imports and the planning
    from .checkpoint import expand_checkpoint, verify_checkpoint
    from .checkpoint_errors import CheckpointError, DiskFullError, Terminated

    try:
        if args.command == "expand":
            result = expand_checkpoint(
                args.source, args.destination, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                num_attention_heads=args.num_attention_heads, num_key_value_heads=args.num_key_value_heads,
                num_hidden_layers=args.num_hidden_layers, layer_positions=args.layer_positions, seed=args.seed,
                noise_std=args.noise_std, backend=args.backend, device=args.device, dtype=args.dtype,
                max_shard_size=args.max_shard_size, overwrite=args.overwrite, dry_run=args.dry_run,
                progress=args.progress, direct_io=args.direct_io,
                log=lambda text: _say_in_flags(text, (args.source, args.destination)))
            return 2 if result.refusal else 0  # a dry run as a pre-check: what the real run would refuse fails it
        report, tolerance = verify_checkpoint(args.source, args.destination, tolerance=args.tolerance,
                                              token_ids=args.token_ids, image=args.image)
        return 0 if report.output_relative <= tolerance else 1
    except (CheckpointError, ValueError, TypeError, RuntimeError) as error:  # said in the Python API's keywords
        message = re.sub(r"^lemon(\.\w+)?: ", "", str(error))  # one prefix: the command's
        print(f"lemon {args.command}: {_as_flags(message, args.command, (args.source, args.destination))}",
              file=sys.stderr)
        return 2
    except DiskFullError as error:
        print(f"lemon expand: {error.strerror}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        how = "interrupted" if isinstance(stop, KeyboardInterrupt) else f"terminated by {stop}"
        done = (f"nothing was written to {args.destination} (temporary files removed)" if args.command == "expand"
                else "nothing was written")
        print(f"lemon {args.command}: {how}; {done}", file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else 128 + stop.signum


# Per command, the keywords of expand_checkpoint / verify_checkpoint that are its flags: named alone in a
# message (distinctive enough to translate as words), only as keywords (``seed=3``, ``image=``: as words
# they are plain English), and switches. A size named in a verify message is the config's, not a flag.
SIZES = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")
FLAGS = {"expand": SIZES + ("layer_positions", "noise_std", "max_shard_size"), "verify": ("token_ids",)}
KEYWORD_FLAGS = {"expand": FLAGS["expand"] + ("seed", "dtype", "device", "backend"),
                 "verify": FLAGS["verify"] + ("image", "tolerance")}
SWITCHES = {"expand": {"overwrite=True": "--overwrite", "direct_io=True": "--direct-io",
                       "direct_io=False": "--no-direct-io"}, "verify": {}}
NOT_IN_A_PATH = r"(?<![-\w./])"  # a keyword starts a word, never inside a path or a longer name


def _as_flags(message: str, command: str = "expand", paths: tuple = ()) -> str:
    """A message of lemon's Python API in ``lemon COMMAND``'s words: ``hidden_size=1024`` as
    ``--hidden-size 1024``, ``overwrite=True`` as ``--overwrite``, ``image=`` (no value) and a
    keyword named alone (``hidden_size``) as the flag (``--image``, ``--hidden-size``). The
    command's ``paths`` (and any path) are left as they are, whatever names they hold."""
    import os

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    kept = sorted({str(p) for path in paths for p in (path, os.path.abspath(path))}, key=len, reverse=True)
    for i, path in enumerate(kept):  # out of the way of the patterns below, put back at the end
        message = message.replace(path, f"\0{i}\0")
    for switch, text in SWITCHES[command].items():
        message = re.sub(rf"{NOT_IN_A_PATH}{re.escape(switch)}(?![\w/])", text, message)
    keywords = "|".join(KEYWORD_FLAGS[command])
    message = re.sub(rf"{NOT_IN_A_PATH}({keywords})=([^\s,;:)/]\S*?)(?=[,;:)]?(\s|$))",
                     lambda m: f"{flag(m[1])} {m[2]}", message)
    message = re.sub(rf"{NOT_IN_A_PATH}({keywords})=(?=[\s,;:)]|$)", lambda m: flag(m[1]), message)
    message = re.sub(rf"{NOT_IN_A_PATH}({'|'.join(FLAGS[command])})\b(?![/=])", lambda m: flag(m[1]), message)
    for i, path in enumerate(kept):
        message = message.replace(f"\0{i}\0", path)
    return message.replace("the keywords --", "the flags --").replace("the keyword --", "the flag --")


def _say_in_flags(text: str, paths: tuple = ()) -> None:
    """expand_checkpoint's lines on stderr, a dry run's refusal in flags (the plan's lines name
    sizes as the config does, and stay so)."""
    from .checkpoint import WOULD_REFUSE

    head, marker, refusal = text.partition(WOULD_REFUSE)
    print(head + marker + _as_flags(refusal, "expand", paths) if marker else text, file=sys.stderr, flush=True)


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


def entry() -> None:
    """The `lemon` command's entry point: :func:`main`, then an exit that skips the interpreter's
    teardown. Unloading torch and transformers module by module takes ~0.5 s on 2 cores, longer
    than many a command's own work; every file lemon wrote is closed (and renamed into place) by
    then, so only the standard streams need flushing."""
    import os

    _plain_warnings()  # the process is the command's: its warnings may be formatted for it
    try:
        code = main()
    except SystemExit as exit_:  # argparse's --help, --version and usage errors
        code = 0 if exit_.code is None else exit_.code
        if not isinstance(code, int):  # a message instead of a status
            print(code, file=sys.stderr)
            code = 2
    except KeyboardInterrupt:  # before a subcommand's own handling, e.g. while torch imports: nothing written yet
        print("lemon: interrupted", file=sys.stderr)
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
