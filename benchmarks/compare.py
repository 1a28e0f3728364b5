"""Before/after chart of the reference executor: quiet machine and a busy neighbour.

    python benchmarks/compare.py [--before benchmarks/results/before] [--after benchmarks/results]

Reads the JSON that ``bench_expand.py`` wrote for two versions of lemon (``--before``: any
number of ``bench_expand*.json`` files of the older version; ``--after``: this version's) and
draws, per case present in both, the median expansion time quiet, beside a busy Python
process and beside a busy PyTorch process, into ``<after>/before_after.png``; prints the table.
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


def load(folder: Path) -> dict:
    """(case name, dtype, setting label) -> median expansion seconds, from every JSON in ``folder``."""
    times = {}
    for path in sorted(folder.glob("bench_expand*.json")):
        record = json.loads(path.read_text())
        for result in record["results"]:
            contenders = result.get("contenders", 0)
            contender = result.get("contender", "python") if contenders else None
            label = next((lbl for n, c, lbl in SETTINGS if (n, c) == (contenders, contender)), None)
            if label:
                times[result["case"]["name"], result["case"]["dtype"], label] = statistics.median(result["expand_s"])
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=str(HERE / "results" / "before"))
    parser.add_argument("--after", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    before, after = load(Path(args.before)), load(Path(args.after))
    cases = sorted({key[:2] for key in before} & {key[:2] for key in after})
    if not cases:
        print("no case was measured in both folders", file=sys.stderr)
        return 1
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
        for offset, (times, color, who) in enumerate(((before, "#aaaaaa", "before"), (after, "#d62728", "after"))):
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
    fig.suptitle("reference executor before and after chunk-parallel, class-keyed noise (2-core CPU)", fontsize=10)
    fig.tight_layout()
    out = Path(args.after) / "before_after.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
