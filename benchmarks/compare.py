"""Before/after chart of ``lemon.expand``: quiet machine and a busy neighbour, for one backend.

    python benchmarks/compare.py [--before benchmarks/results/before] [--after benchmarks/results]
                                 [--backend reference] [--before-backend NAME]

Reads the JSON that ``bench_expand.py`` wrote for two versions of lemon (``--before``: any
number of ``bench_expand*.json`` files of the older version; ``--after``: this version's) and
draws, per case present in both, the median expansion time quiet, beside a busy Python
process and beside a busy PyTorch process; prints the table. The chart goes to
``<after>/before_after.png`` (``before_after_<backend>.png`` for another ``--backend`` than
reference).

Both formats of ``bench_expand.py`` are read: the older one held one backend's numbers at the top
level of each result (``machine.backend`` said which; files without it are ``reference``), the
newer one holds every backend's under ``result["backends"][name]``. ``--backend`` picks the
backend of the ``--after`` files; ``--before-backend`` that of the ``--before`` files (default:
``--backend`` in files of the newer format, and whatever backend an older-format file measured,
i.e. ``reference``, so that ``--backend cpp`` compares the C++ executor with the older version's
reference executor).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = [(0, None, "quiet"), (1, "python", "beside a busy Python process"),
            (1, "torch", "beside a busy PyTorch process")]


def results_of(record: dict, backend: str | None) -> list[tuple[dict, str, list[float]]]:
    """(result, backend, expand times) of every result of a bench_expand record that measured
    ``backend`` (None: an older-format result's one backend, or the newer format's first)."""
    rows = []
    old_backend = record.get("machine", {}).get("backend", "reference")
    for result in record["results"]:
        if "backends" in result:  # newer format: every backend of the case
            name = backend if backend is not None else next(iter(result["backends"]), None)
            if name in result["backends"]:
                rows.append((result, name, result["backends"][name]["expand_s"]))
        elif isinstance(old_backend, str) and backend in (None, old_backend):  # older: one backend
            rows.append((result, old_backend, result["expand_s"]))
    return rows


def load(folder: Path, backend: str | None, older_any: bool = False) -> tuple[dict, set]:
    """(case name, dtype, setting label) -> median expansion seconds of ``backend``, from every
    JSON in ``folder``; and the backends those numbers are of. With ``older_any``, an
    older-format file gives its one backend's numbers, whichever it was."""
    times, found = {}, set()
    for path in sorted(folder.glob("bench_expand*.json")):
        record = json.loads(path.read_text())
        newer = any("backends" in result for result in record["results"])
        for result, name, expand_s in results_of(record, None if older_any and not newer else backend):
            contenders = result.get("contenders", 0)
            contender = result.get("contender", "python") if contenders else None
            label = next((lbl for n, c, lbl in SETTINGS if (n, c) == (contenders, contender)), None)
            if label:
                times[result["case"]["name"], result["case"]["dtype"], label] = statistics.median(expand_s)
                found.add(name)
    return times, found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=str(HERE / "results" / "before"))
    parser.add_argument("--after", default=str(HERE / "results"))
    parser.add_argument("--backend", default="reference",
                        help="the backend of the --after files (default reference)")
    parser.add_argument("--before-backend", default=None,
                        help="the backend of the --before files (default: --backend in newer-format files, "
                             "the one measured backend, reference, in older-format ones)")
    parser.add_argument("--title", default=None, help="the chart's title")
    args = parser.parse_args(argv)
    if args.before_backend is not None:
        before, before_found = load(Path(args.before), args.before_backend)
    else:  # older-format files: the backend they measured
        before, before_found = load(Path(args.before), args.backend, older_any=True)
    after, _ = load(Path(args.after), args.backend)
    cases = sorted({key[:2] for key in before} & {key[:2] for key in after})
    if not cases:
        print(f"no case was measured in both folders (before: backend "
              f"{args.before_backend or args.backend + ' or older-format files'}; after: backend {args.backend})",
              file=sys.stderr)
        return 1
    before_name = "/".join(sorted(before_found))
    print(f"before: {args.before} (backend {before_name}); after: {args.after} (backend {args.backend})")
    print(f"{'case':<28} {'dtype':<9} {'setting':<30} {'before s':>9} {'after s':>8} {'speed-up':>8}")
    for name, dtype in cases:
        for _, _, label in SETTINGS:
            b, a = before.get((name, dtype, label)), after.get((name, dtype, label))
            if b is not None and a is not None:
                print(f"{name:<28} {dtype:<9} {label:<30} {b:>9.2f} {a:>8.2f} {b / a:>7.1f}x")
    try:
        import matplotlib
    except ImportError:
        print("matplotlib missing (pip install matplotlib): no chart", file=sys.stderr)
        return 0
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 4.2), squeeze=False)
    for ax, (name, dtype) in zip(axes[0], cases):
        labels = [lbl for _, _, lbl in SETTINGS if (name, dtype, lbl) in before and (name, dtype, lbl) in after]
        xs = range(len(labels))
        for offset, (times, color, who) in enumerate(((before, "#aaaaaa", f"before ({before_name})"),
                                                      (after, "#d62728", f"after ({args.backend})"))):
            ys = [times[name, dtype, lbl] for lbl in labels]
            bars = ax.bar([x + (offset - 0.5) * 0.38 for x in xs], ys, 0.38, color=color, label=who)
            for bar, y in zip(bars, ys):
                ax.annotate(f"{y:.3g}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 1), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([lbl.replace("beside a ", "").replace(" process", "") for lbl in labels], fontsize=8)
        ax.set_title(f"{name} ({dtype})", fontsize=9)
        ax.grid(axis="y", which="both", alpha=0.25)
    axes[0][0].set_ylabel("lemon.expand, seconds (log scale)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(args.title or f"lemon.expand before (backend {before_name}) and after (backend {args.backend})",
                 fontsize=10)
    fig.tight_layout()
    out = Path(args.after) / ("before_after.png" if args.backend == "reference"
                              else f"before_after_{args.backend}.png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
