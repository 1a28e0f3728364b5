"""Two checkouts of lemon, one expansion, alternating: what a change did to whole-model time.

    python benchmarks/ab_expand.py BEFORE_DIR AFTER_DIR [--cases 6,0,2] [--rounds 2] [--runs 7]

Each checkout needs its C++ extension built (for an older commit: ``git worktree add DIR COMMIT``
and copy ``lemon/_C*.so`` into ``DIR/lemon/`` when ``csrc/`` did not change). Per round and
checkout, a fresh Python process imports that checkout's lemon, builds each case of
``bench_expand.py`` (same random source) and times ``--runs`` expansions with ``backend="cpp"``;
it prints the median of all but the first and the fastest. The checkouts alternate, so drift of
the machine (this VM's memory is noisy) falls on both alike.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

WORKER = r"""
import sys, time, statistics
repo, cases, runs = sys.argv[1], [int(c) for c in sys.argv[2].split(",")], int(sys.argv[3])
sys.path.insert(0, repo + "/benchmarks"); sys.path.insert(0, repo)
import bench_expand as B, lemon
assert lemon.__file__.startswith(repo), lemon.__file__
for index in cases:
    case = B.FULL_CASES[index]
    model = B.build_source(case)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        big = lemon.expand(model, **case["target"], backend="cpp", progress=False)
        times.append(time.perf_counter() - start)
        del big
    print(f"{case['name']} ({case['dtype']})\t{statistics.median(times[1:]):.3f}\t{min(times):.3f}", flush=True)
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--cases", default="6,0,2", help="indices into bench_expand.FULL_CASES")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    for round_ in range(args.rounds):
        for label, repo in (("before", os.path.abspath(args.before)), ("after", os.path.abspath(args.after))):
            out = subprocess.run([sys.executable, "-c", WORKER, repo, args.cases, str(args.runs)],
                                 capture_output=True, text=True, check=True).stdout
            for line in out.strip().splitlines():
                name, median, fastest = line.split("\t")
                print(f"round {round_}  {label:6s}  {name:32s}  median {median} s  fastest {fastest} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
