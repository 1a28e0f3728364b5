"""What ``lemon expand`` costs on disk: a multi-GB checkpoint directory expanded x2 in width, by
streaming, against ``cp -r`` of a checkpoint of the output's size and against mergekit's depth
up-scaling of the same source.

    python benchmarks/bench_checkpoint.py [--quick] [--out benchmarks/results] [--workdir DIR] [--keep]
                                          [--runs 2] [--mergekit | --no-mergekit] [--mergekit-yaml PATH]
                                          [--max-shard-size 2GB] [--wait-quiet 0.5 --wait-max 900]
                                          [--device cpu|cuda] [--backend auto]

It writes its own source checkpoint under ``--workdir`` (default: a temporary directory under
/tmp, removed at the end unless ``--keep``): a random Llama of hidden 2048, 16 layers, 32 heads
(MHA), FFN 5632, vocabulary 32000, untied head, in bf16 (0.95B parameters, 1.9 GB):
``config.json`` from ``transformers.LlamaConfig(...).save_pretrained``, weights streamed tensor by
tensor (N(0, 0.02); norm gains 1 + N(0, 0.01)) with ``lemon.safetensors_stream.ShardWriter`` into
shards of ~1 GB with transformers' ``model.safetensors.index.json``. The whole model is never
held in memory. Then, ``--runs`` times (default 3), in this order (alternating):

* a Python that only imports what ``lemon expand`` imports (torch, transformers, lemon, the Llama
  classes, the C++ executor): the start-up, in time and memory;
* ``lemon expand --dry-run`` of the command below: the baseline memory the issue names, the same process
  (Python, torch, transformers, lemon imported, the checkpoint checked and planned, the
  largest tensor read and one block expanded), nothing written;
* ``python -m lemon expand SRC DST --hidden-size 4096 --intermediate-size 11264
  --num-attention-heads 64 --num-key-value-heads 64 --max-shard-size 2GB --no-progress``
  (0.95B -> 3.55B parameters, 7.1 GB of bf16 in 4 shards), plus ``--device cuda --backend B``
  where asked (the tensors expanded on the GPU, read and written by the CPU);
* ``cp -r DST DST-copy``: the ceiling, moving a checkpoint of the output's size on the same disk;
* with mergekit (``--mergekit``, or by default where ``/tmp/mkvenv/bin/mergekit-yaml`` or a
  ``mergekit-yaml`` on the PATH exists; never in ``--quick`` unless asked): its depth up-scaling of
  the same source (SOLAR's recipe: ``merge_method: passthrough``, slices of layers [0, 12) and
  [4, 16): 24 layers, 1.4B parameters) with ``mergekit-yaml config.yml OUT --lazy-unpickle``
  on the CPU, and ``cp -r`` of its output (mergekit's own ceiling: its output is smaller).

Each command runs as the only child of a fresh small Python process, which times it (wall
clock), reads ``getrusage(RUSAGE_CHILDREN)`` after it (peak RSS ``ru_maxrss``, CPU times, page
faults, blocks read and written), then times an ``os.sync()`` (the dirty pages the command left
in the page cache reaching the disk: without it a writer that finishes into the page cache looks
faster than it is). Before each command the previous outputs are removed, the disk is synced and,
where permitted (root; not in ``--quick``), the page cache is dropped (``echo 3 >
/proc/sys/vm/drop_caches``): every command then reads its input from the disk. Whether that
worked is recorded; where it did not, the source (and ``cp``'s input) is read from the page cache.

Targets (the issue's, for a 2-core CPU): lemon's wall time <= 1.5x ``cp -r`` of its output
(checked both without and with the sync), and lemon's peak RSS above its dry run <= the largest
source tensor + 2 output shards (``--max-shard-size``). The dry run copies the largest source
tensor and expands one block of it, which the real run does not hold at once (it reads through
a memory map and drops each tensor's pages), so the RSS above the imports-only run is recorded
too; so are lemon's own reported time (reading, expanding and writing, after start-up and
planning) and its wall time minus the imports-only run's, each over cp -r's (informative).

It prints a table (rows: lemon expand, cp -r, mergekit, cp -r of mergekit's output), writes every
raw number (each run, the load average around it, whether the caches were dropped) plus machine
info to ``<out>/bench_checkpoint.json`` and, where matplotlib is installed, a chart of wall times
and peak RSS side by side to ``<out>/bench_checkpoint.png`` (``bench_checkpoint_cuda.*`` with
``--device cuda``). After the last run it checks lemon's
output with ``lemon.checkpoint.open_checkpoint`` (every shard complete, every tensor's shape what
the expanded config makes it) and, in ``--quick``, also with ``lemon verify`` (load both, compare
outputs). ``--quick``: a tiny Llama (hidden 128, 2 layers, vocabulary 1000) expanded x2 in a few
seconds, no mergekit, no cache dropping: a smoke test of the script.

mergekit is a peer here, never a dependency of lemon: install it beside the system's torch with
``python -m venv --system-site-packages /tmp/mkvenv && /tmp/mkvenv/bin/pip install mergekit``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# benchmark the lemon of this checkout, whatever an editable install elsewhere points to
sys.path.insert(0, str(REPO))

GB = 1e9
TIME_TARGET = 1.5  # lemon's wall time / cp -r's
MERGEKIT_VENV = Path("/tmp/mkvenv/bin/mergekit-yaml")

FULL = dict(
    source=dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=32,
                intermediate_size=5632, vocab_size=32000),
    target=dict(hidden_size=4096, intermediate_size=11264, num_attention_heads=64, num_key_value_heads=64),
    source_shard="1GB", max_shard_size="2GB",
)
QUICK = dict(
    source=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                intermediate_size=352, vocab_size=1000),
    target=dict(hidden_size=256, intermediate_size=704, num_attention_heads=8, num_key_value_heads=8),
    source_shard="500KB", max_shard_size="2MB",
)

# The measuring parent: the command is its only child, so RUSAGE_CHILDREN is that command's alone
# (ru_maxrss: the largest peak RSS of the waited-for descendants, in KiB on Linux).
MEASURE = r"""
import json, os, resource, subprocess, sys, time
log, cmd = sys.argv[1], sys.argv[2:]
with open(log, "wb") as f:
    start = time.perf_counter()
    rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
start = time.perf_counter()
os.sync()
sync = time.perf_counter() - start
print(json.dumps({"rc": rc, "wall_s": wall, "sync_s": sync, "peak_rss_bytes": ru.ru_maxrss * 1024,
                  "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "minor_faults": ru.ru_minflt,
                  "major_faults": ru.ru_majflt, "in_blocks": ru.ru_inblock, "out_blocks": ru.ru_oublock}))
"""


# --------------------------------------------------------------------------- the source checkpoint

def _shard_groups(tensors: list[tuple[str, object, tuple]], max_bytes: int) -> list[list]:
    """Consecutive groups of at most ``max_bytes`` (a larger tensor alone), as transformers shards."""
    from lemon.safetensors_stream import nbytes_of

    groups, size = [[]], 0
    for entry in tensors:
        n = nbytes_of(entry[1], entry[2])
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += n
    return groups


def llama_config(sizes: dict):
    import transformers

    return transformers.LlamaConfig(**sizes, tie_word_embeddings=False, architectures=["LlamaForCausalLM"],
                                    dtype="bfloat16")


def state_shapes(sizes: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a LlamaForCausalLM of these sizes, from a model on the meta device."""
    import transformers

    from lemon.rules import empty_model

    meta = empty_model(transformers.LlamaForCausalLM, llama_config(sizes))
    return {name: tuple(t.shape) for name, t in meta.state_dict().items()}


def write_source(path: Path, sizes: dict, shard_bytes: int, seed: int = 0) -> dict:
    """A random bf16 Llama checkpoint at ``path``, streamed tensor by tensor into ~``shard_bytes``
    shards with transformers' index; returns what was written."""
    import torch

    from lemon.safetensors_stream import ShardWriter, nbytes_of

    start = time.perf_counter()
    path.mkdir(parents=True)
    llama_config(sizes).save_pretrained(path)
    tensors = [(name, torch.bfloat16, shape) for name, shape in state_shapes(sizes).items()]
    groups = _shard_groups(tensors, shard_bytes)
    files = ([f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
             if len(groups) > 1 else ["model.safetensors"])
    gen = torch.Generator().manual_seed(seed)
    weight_map = {}
    for group, file in zip(groups, files):
        writer = ShardWriter(path / file, group)
        for name, dtype, shape in group:
            tensor = torch.empty(shape, dtype=dtype)
            if len(shape) == 1:  # RMSNorm gains
                tensor.normal_(1.0, 0.01, generator=gen)
            else:
                tensor.normal_(0.0, 0.02, generator=gen)
            writer.write(name, tensor)
            del tensor
            weight_map[name] = file
        writer.close()
    total = sum(nbytes_of(d, s) for _, d, s in tensors)
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    largest = max(tensors, key=lambda t: nbytes_of(t[1], t[2]))
    return {"path": str(path), "params": sum(_numel(s) for _, _, s in tensors), "bytes": total,
            "tensors": len(tensors), "shards": len(files), "shard_bytes": shard_bytes,
            "largest_tensor": {"name": largest[0], "shape": list(largest[2]),
                               "bytes": nbytes_of(largest[1], largest[2])},
            "write_s": time.perf_counter() - start}


def _size(n: float) -> str:
    return f"{n / GB:.2f} GB" if abs(n) >= 0.1 * GB else f"{n / 1e6:.1f} MB"


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --------------------------------------------------------------------------- measuring

def loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def drop_caches() -> tuple[bool, str | None]:
    """Write back dirty pages, then drop the page cache (root only)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True, None
    except OSError as error:
        return False, f"{type(error).__name__}: {error}"


def remove(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def measure(what: str, cmd: list[str], log: Path, drop: bool, env: dict | None = None) -> dict:
    """Run ``cmd`` as the only child of a fresh Python parent; its wall time, sync time, rusage."""
    dropped, why = drop_caches() if drop else (False, "not asked")
    before = loadavg()
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(log), *cmd], capture_output=True, text=True,
                          env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring parent failed for {what}:\n{proc.stdout}\n{proc.stderr}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    text = log.read_text(errors="replace") if log.exists() else ""
    record.update({"what": what, "command": cmd, "caches_dropped": dropped, "drop_error": why,
                   "loadavg_before": before, "loadavg_after": loadavg(),
                   "wall_incl_sync_s": record["wall_s"] + record["sync_s"],
                   "log_tail": text[-2000:]})
    reported = re.search(r"lemon: wrote .* in ([0-9.]+) s \(", text)
    record["reported_s"] = float(reported.group(1)) if reported else None
    return record


def lemon_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------------- mergekit

def find_mergekit(path: str | None) -> tuple[str | None, str | None]:
    """mergekit-yaml's path, or (None, why not)."""
    if path:
        return (path, None) if os.access(path, os.X_OK) else (None, f"{path} is not an executable")
    if os.access(MERGEKIT_VENV, os.X_OK):
        return str(MERGEKIT_VENV), None
    found = shutil.which("mergekit-yaml")
    if found:
        return found, None
    return None, (f"mergekit-yaml not found ({MERGEKIT_VENV} nor on the PATH): install it with python -m venv "
                  "--system-site-packages /tmp/mkvenv && /tmp/mkvenv/bin/pip install mergekit")


def mergekit_version(yaml_script: str) -> str | None:
    """The version installed beside ``mergekit-yaml`` (its shebang's Python)."""
    try:
        with open(yaml_script) as f:
            first = f.readline()
        python = first[2:].strip() if first.startswith("#!") else sys.executable
        out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
                             capture_output=True, text=True, timeout=120)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def dus_slices(layers: int) -> list[list[int]]:
    """SOLAR's depth up-scaling: the first and the last 3/4 of the layers (16 -> [0, 12) + [4, 16))."""
    keep = layers - layers // 4
    return [[0, keep], [layers - keep, layers]]


def mergekit_yaml(source: Path, slices: list[list[int]]) -> str:
    lines = ["slices:"]
    for lo, hi in slices:
        lines += ["  - sources:", f"      - model: {json.dumps(str(source))}", f"        layer_range: [{lo}, {hi}]"]
    lines += ["merge_method: passthrough", "dtype: bfloat16", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the benchmark

def machine_info(workdir: Path) -> dict:
    """The common record (benchmarks/machine.py) and what bounds a disk benchmark: the page-cache
    writeback settings, the work directory's filesystem and its free space."""
    from machine import machine_info as common

    vm = {}
    for key in ("dirty_ratio", "dirty_background_ratio", "dirty_expire_centisecs"):
        try:
            vm[key] = int(Path(f"/proc/sys/vm/{key}").read_text())
        except (OSError, ValueError):
            vm[key] = None
    filesystem = None
    try:
        df = subprocess.run(["df", "-T", str(workdir)], capture_output=True, text=True).stdout.splitlines()
        filesystem = df[-1] if len(df) > 1 else None
    except OSError:
        pass
    return {**common(), "workdir_filesystem": filesystem, "vm": vm, "disk_free_bytes": shutil.disk_usage(workdir).free}


def wait_quiet(threshold: float | None, longest: float) -> dict:
    """Wait (up to ``longest`` s) for the 1-minute load average to fall below ``threshold``."""
    start = time.monotonic()
    record = {"threshold": threshold, "loadavg_at_start": loadavg()}
    if threshold is None:
        return record
    while True:
        load = loadavg()
        if load is None or load[0] < threshold:
            record.update(quiet=True, waited_s=time.monotonic() - start, loadavg=load)
            return record
        if time.monotonic() - start >= longest:
            print(f"  load average {load[0]:.2f} still >= {threshold} after {longest:.0f} s: running anyway",
                  flush=True)
            record.update(quiet=False, waited_s=time.monotonic() - start, loadavg=load)
            return record
        print(f"  load average {load[0]:.2f} >= {threshold}: waiting ...", flush=True)
        time.sleep(30)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[dict], what: str) -> dict | None:
    mine = [r for r in runs if r["what"] == what and r["rc"] == 0]
    if not mine:
        return None
    return {
        "runs": len(mine), "wall_s": median([r["wall_s"] for r in mine]),
        "sync_s": median([r["sync_s"] for r in mine]),
        "wall_incl_sync_s": median([r["wall_incl_sync_s"] for r in mine]),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in mine),
        "peak_rss_median_bytes": median([r["peak_rss_bytes"] for r in mine]),
        "user_s": median([r["user_s"] for r in mine]), "sys_s": median([r["sys_s"] for r in mine]),
        "output_bytes": median([r["output_bytes"] for r in mine if r.get("output_bytes") is not None]),
        "reported_s": median([r["reported_s"] for r in mine if r.get("reported_s") is not None]),
    }


def ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    return None if not a or not b or not b[key] else a[key] / b[key]


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


ROWS = [("lemon", "lemon expand (x2 width)", "cp"), ("cp", "cp -r (lemon's output)", "cp"),
        ("mergekit", "mergekit DUS (passthrough)", "cp_mergekit"),
        ("cp_mergekit", "cp -r (mergekit's output)", "cp_mergekit")]
BASELINES = [("lemon_dry_run", "baseline: lemon --dry-run", None),
             ("imports", "baseline: imports only", None)]
# what `python -m lemon expand` imports before it reads a byte (its executor included)
IMPORTS = ("import torch, transformers, lemon.cli, lemon.checkpoint, lemon.rules\n"
           "from transformers import LlamaForCausalLM, LlamaConfig\n"
           "from lemon.backends import executor\n"
           "executor({backend!r}, torch.device({device!r}))\n")


def table(record: dict) -> str:
    s, t = record["summary"], record["targets"]
    head = (f"{'':<28} {'out GB':>7} {'wall s':>7} {'+sync s':>8} {'x cp -r':>8} {'x cp (+sync)':>12} "
            f"{'peak RSS GB':>11} {'above dry run GB':>16} {'above imports GB':>16}  target")
    lines = [head, "-" * (len(head) + 24)]
    for key, label, ceiling in ROWS + BASELINES:
        this = s.get(key)
        if this is None:
            if key == "mergekit":
                lines.append(f"{label:<28} not run: {record['mergekit']['reason']}")
            continue
        x = ratio(this, s.get(ceiling), "wall_s") if ceiling else None
        xs = ratio(this, s.get(ceiling), "wall_incl_sync_s") if ceiling else None
        above, above_imports, target = "", "", ""
        if key == "lemon":
            above = f"{t['rss']['above_dry_run_bytes'] / GB:.3f}"
            above_imports = f"{t['rss']['above_imports_bytes'] / GB:.3f}"
            target = (f"time <= {TIME_TARGET}x cp -r: {'met' if t['time']['met'] else 'NOT met'} "
                      f"({'met' if t['time']['met_incl_sync'] else 'NOT met'} incl. sync); RSS above dry run <= "
                      f"{_size(t['rss']['limit_bytes'])}: {'met' if t['rss']['met'] else 'NOT met'}")
        out = "" if this["output_bytes"] is None else f"{this['output_bytes'] / GB:.3f}"
        lines.append(f"{label:<28} {out:>7} {this['wall_s']:>7.2f} "
                     f"{this['wall_incl_sync_s']:>8.2f} {_ratio(x):>8} {_ratio(xs):>12} "
                     f"{this['peak_rss_bytes'] / GB:>11.3f} {above:>16} {above_imports:>16}  {target}")
    dry, imports = s["lemon_dry_run"], s["imports"]
    lines.append(f"wall s: median of {record['config']['runs']} runs; +sync s: wall + the os.sync() after it "
                 "(median); x cp -r: this row's median / that of cp -r of an output of the same size; peak RSS: "
                 "the largest ru_maxrss of the runs; above dry run / imports: minus the median peak RSS of "
                 f"the dry run ({_size(dry['peak_rss_median_bytes'])}) / of a Python that only imports what "
                 f"lemon expand imports ({_size(imports['peak_rss_median_bytes'])}). RSS limit = largest source "
                 f"tensor ({_size(t['rss']['largest_tensor_bytes'])}) + 2 x max shard "
                 f"({_size(t['rss']['shard_bytes'])}). Page cache dropped before each run: "
                 f"{record['drop_caches']['summary']}.")
    reported = record["ratios"].get("lemon_reported_s")
    if reported:
        lines.append(f"lemon's own report (reading, expanding, writing; after start-up and planning): "
                     f"{reported:.2f} s = {record['ratios']['lemon_reported_vs_cp']:.2f}x cp -r; "
                     f"lemon's wall minus the imports-only run: "
                     f"{record['ratios']['lemon_minus_imports_vs_cp']:.2f}x cp -r.")
    return "\n".join(lines)


def plot(record: dict, path: Path) -> bool:
    """Wall times (with the sync on top) and peak RSS, side by side; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib missing (pip install matplotlib): no chart", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = record["summary"]
    rows = [(key, label) for key, label, _ in ROWS if s.get(key)]
    colors = {"lemon": "#9467bd", "cp": "#1f77b4", "mergekit": "#d62728", "cp_mergekit": "#17becf"}
    labels = [f"{label.replace(' (', chr(10) + '(')}\n{_size(s[key]['output_bytes'])} out" for key, label in rows]
    xs = range(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2))
    walls = [s[k]["wall_s"] for k, _ in rows]
    syncs = [s[k]["wall_incl_sync_s"] - s[k]["wall_s"] for k, _ in rows]
    left.bar(xs, walls, color=[colors[k] for k, _ in rows], label="wall (median)")
    left.bar(xs, syncs, bottom=walls, color=[colors[k] for k, _ in rows], alpha=0.35, hatch="//",
             label="+ sync after it (median)")
    for key, _ in rows:  # each run's wall time
        i = [k for k, _ in rows].index(key)
        runs = [r["wall_s"] for r in record["runs"] if r["what"] == key and r["rc"] == 0]
        left.scatter([i] * len(runs), runs, marker="_", color="black", s=200, zorder=3)
    tops = []
    for i, (key, _) in enumerate(rows):
        ceiling = dict((k, c) for k, _, c in ROWS)[key]
        x = ratio(s[key], s.get(ceiling), "wall_s")
        top = max([walls[i] + syncs[i]] + [r["wall_s"] for r in record["runs"] if r["what"] == key and r["rc"] == 0])
        tops.append(top)
        left.annotate(f"{s[key]['wall_s']:.3g} s (+sync {s[key]['wall_incl_sync_s']:.3g} s)\n{x:.2f}x cp -r",
                      (i, top), ha="center", va="bottom", fontsize=8, xytext=(0, 4), textcoords="offset points")
    left.set_ylabel("seconds")
    left.set_title("wall time (bars: median; ticks: each run)", fontsize=10)
    left.set_xticks(list(xs))
    left.set_xticklabels(labels, fontsize=7)
    left.legend(fontsize=7, loc="upper left")
    left.grid(axis="y", alpha=0.25)
    left.set_ylim(0, max(tops) * 1.3)

    rss = [s[k]["peak_rss_bytes"] / GB for k, _ in rows]
    right.bar(xs, rss, color=[colors[k] for k, _ in rows])
    for i, value in enumerate(rss):
        right.annotate(f"{value:.2f} GB", (i, value), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                       textcoords="offset points")
    dry = s["lemon_dry_run"]["peak_rss_median_bytes"] / GB
    limit = dry + record["targets"]["rss"]["limit_bytes"] / GB
    li = [k for k, _ in rows].index("lemon")
    imports = s["imports"]["peak_rss_median_bytes"] / GB
    right.hlines(imports, li - 0.4, li + 0.4, colors="grey", linestyles="-.",
                 label=f"imports only {imports:.2f} GB")
    right.hlines(dry, li - 0.4, li + 0.4, colors="black", linestyles=":", label=f"lemon dry run {dry:.2f} GB")
    right.hlines(limit, li - 0.4, li + 0.4, colors="black", linestyles="--",
                 label=f"target: dry run + largest tensor + 2 shards = {limit:.2f} GB")
    right.set_ylabel("peak RSS, GB")
    right.set_title("peak resident memory (ru_maxrss, largest of the runs)", fontsize=10)
    right.set_xticks(list(xs))
    right.set_xticklabels(labels, fontsize=7)
    right.legend(fontsize=7, loc="upper left")
    right.grid(axis="y", alpha=0.25)
    right.set_ylim(0, max(rss + [limit]) * 1.3)
    m = record["machine"]
    fig.suptitle(f"{record['case']}: lemon expand vs cp -r vs mergekit — {m['cpu_count']}-core CPU, "
                 f"torch {m['torch']}, {record['mode']} run", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def check_lemon_output(source: Path, dst: Path, verify: bool) -> dict:
    """open_checkpoint of lemon's output (every shard and shape checked); lemon verify if asked."""
    from transformers.utils import logging as hf_logging

    from lemon.checkpoint import open_checkpoint, verify_checkpoint

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    out = {"index": (dst / "model.safetensors.index.json").is_file(), "config": (dst / "config.json").is_file()}
    try:
        checkpoint = open_checkpoint(dst)
        out.update(ok=True, tensors=len(checkpoint.tensors), hidden_size=checkpoint.config.hidden_size,
                   num_hidden_layers=checkpoint.config.num_hidden_layers,
                   params=sum(_numel(e.shape) for _, e in checkpoint.tensors.values()))
    except Exception as error:  # noqa: BLE001  (recorded: the benchmark says what failed)
        out.update(ok=False, error=f"{type(error).__name__}: {error}")
    if verify and out["ok"]:
        report, tolerance = verify_checkpoint(source, dst, log=lambda text: None)
        out["verify"] = {"output_relative": report.output_relative, "tolerance": tolerance,
                         "passed": report.output_relative <= tolerance}
    return out


def check_mergekit_output(path: Path) -> dict:
    try:
        config = json.loads((path / "config.json").read_text())
        return {"ok": True, "num_hidden_layers": config.get("num_hidden_layers"),
                "hidden_size": config.get("hidden_size"), "files": sorted(p.name for p in path.iterdir())}
    except (OSError, json.JSONDecodeError) as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny Llama: a smoke test in seconds")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--workdir", default=None,
                        help="where the checkpoints go (default: a new temporary directory under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (default: removed)")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs of each command, alternating (default 3; --quick 2)")
    parser.add_argument("--max-shard-size", default=None, help="lemon's output shards (default 2GB; quick 2MB)")
    parser.add_argument("--source-shard-size", default=None, help="the source's shards (default 1GB; quick 500KB)")
    peer = parser.add_mutually_exclusive_group()
    peer.add_argument("--mergekit", dest="mergekit", action="store_true", default=None,
                      help="run mergekit's depth up-scaling too (default: where mergekit-yaml is found, "
                           "except in --quick)")
    peer.add_argument("--no-mergekit", dest="mergekit", action="store_false")
    parser.add_argument("--mergekit-yaml", default=None, metavar="PATH",
                        help=f"the mergekit-yaml to run (default: {MERGEKIT_VENV}, else the PATH's)")
    parser.add_argument("--drop-caches", choices=("auto", "yes", "no"), default="auto",
                        help="drop the page cache before each run (auto: yes, except in --quick)")
    parser.add_argument("--wait-quiet", type=float, default=None, metavar="LOAD",
                        help="first wait for the 1-minute load average to fall below LOAD")
    parser.add_argument("--wait-max", type=float, default=900, metavar="S",
                        help="longest wait for --wait-quiet (then it runs anyway and records the load)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="lemon expand --device: where the tensors are expanded (default cpu)")
    parser.add_argument("--backend", default="auto", help="lemon expand --backend (default auto)")
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 2 if args.quick else 3
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    from lemon.safetensors_stream import nbytes_of, parse_size

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: this torch sees no CUDA GPU")

    case = QUICK if args.quick else FULL
    max_shard = args.max_shard_size or case["max_shard_size"]
    source_shard = args.source_shard_size or case["source_shard"]
    try:
        max_shard_bytes, source_shard_bytes = parse_size(max_shard), parse_size(source_shard)
    except ValueError as error:
        parser.error(str(error))
    drop = args.drop_caches == "yes" or (args.drop_caches == "auto" and not args.quick)
    use_mergekit = args.mergekit if args.mergekit is not None else not args.quick
    mk_yaml, mk_reason = find_mergekit(args.mergekit_yaml) if use_mergekit else (
        None, "not asked (--no-mergekit)" if args.mergekit is False else "not run in --quick (pass --mergekit)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lemon-bench-ckpt-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        parser.error(f"--workdir {work} is not empty: give an empty or new directory")
    src, dst, dst_copy = work / "source", work / "expanded", work / "expanded-copy"
    mk_out, mk_copy = work / "mergekit-dus", work / "mergekit-dus-copy"

    quiet = wait_quiet(args.wait_quiet, args.wait_max)
    info = machine_info(work)
    started = time.perf_counter()
    src_layers = case["source"]["num_hidden_layers"]
    slices = dus_slices(src_layers)
    name = (f"llama h{case['source']['hidden_size']} x{src_layers}L -> h{case['target']['hidden_size']} "
            f"(x2 width), bf16" + (f", on cuda ({args.backend})" if args.device == "cuda" else ""))
    # sizes known before anything is written: the disk check
    src_shapes = state_shapes(case["source"])
    out_shapes = state_shapes({**case["source"], **case["target"]})
    src_bytes = sum(nbytes_of(_bf16(), s) for s in src_shapes.values())
    out_bytes = sum(nbytes_of(_bf16(), s) for s in out_shapes.values())
    largest_out = max(nbytes_of(_bf16(), s) for s in out_shapes.values())
    mk_layers = sum(hi - lo for lo, hi in slices)
    layer_bytes = sum(nbytes_of(_bf16(), s) for n, s in src_shapes.items() if ".layers.0." in n)
    mk_bytes = src_bytes + (mk_layers - src_layers) * layer_bytes
    needed = int((src_bytes + 2 * out_bytes + (2 * mk_bytes if mk_yaml else 0)) * 1.05)
    free = shutil.disk_usage(work).free
    if free < needed:
        print(f"{work} has {free / GB:.1f} GB free; the benchmark needs {needed / GB:.1f} GB: choose another "
              "--workdir", file=sys.stderr)
        return 2
    print(f"lemon checkpoint benchmark ({'quick' if args.quick else 'full'}): {name}; source "
          f"{src_bytes / GB:.3f} GB -> {out_bytes / GB:.3f} GB; work directory {work}; "
          f"{info['cpu_count']} CPUs, load average {loadavg()}", flush=True)

    mk = {"asked": use_mergekit, "path": mk_yaml, "reason": mk_reason, "ran": False}
    runs: list[dict] = []
    try:
        print("  writing the source checkpoint ...", end=" ", flush=True)
        source = write_source(src, case["source"], source_shard_bytes)
        os.sync()
        print(f"{source['bytes'] / GB:.3f} GB in {source['shards']} shard(s), {source['write_s']:.1f} s", flush=True)

        sizes = []
        for key, value in case["target"].items():
            sizes += [f"--{key.replace('_', '-')}", str(value)]
        expand = [sys.executable, "-m", "lemon", "expand", str(src), str(dst), *sizes,
                  "--max-shard-size", max_shard, "--no-progress", "--device", args.device, "--backend", args.backend]
        env = lemon_env()
        if mk_yaml:
            mk.update(version=mergekit_version(mk_yaml), slices=slices, layers=mk_layers)
            config_file = work / "mergekit-dus.yml"
            mk["config"] = mergekit_yaml(src, slices)
            config_file.write_text(mk["config"])
            # --out-shard-size: its help says parameters, but its writer (mergekit/io/tensor_writer.py)
            # compares it with tensor bytes: the same bytes as lemon's shards
            mk["out_shard_size"] = max_shard_bytes
            mk_cmd = [mk_yaml, str(config_file), str(mk_out), "--lazy-unpickle", "--out-shard-size",
                      str(max_shard_bytes), "--no-copy-tokenizer", "--quiet"]
            mk["command"] = mk_cmd
        mk_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

        def step(what, cmd, output, log_env, removes):
            remove(*removes)
            print(f"  run {r + 1}/{args.runs}: {what} ...", end=" ", flush=True)
            rec = measure(what, cmd, work / f"{what}-{r + 1}.log", drop, log_env)
            rec["round"] = r + 1
            rec["output_bytes"] = dir_bytes(output) if output is not None and output.exists() else None
            runs.append(rec)
            status = "" if rec["rc"] == 0 else f" FAILED (exit {rec['rc']}): {rec['log_tail'][-600:]}"
            print(f"{rec['wall_s']:.2f} s + sync {rec['sync_s']:.2f} s, peak RSS "
                  f"{rec['peak_rss_bytes'] / GB:.3f} GB{status}", flush=True)
            return rec

        for r in range(args.runs):
            step("imports", [sys.executable, "-c", IMPORTS.format(backend=args.backend, device=args.device)], None,
                 env, [dst, dst_copy])
            step("lemon_dry_run", expand + ["--dry-run"], None, env, [])
            rec = step("lemon", expand, dst, env, [dst])
            if rec["rc"] != 0:
                raise RuntimeError(f"lemon expand failed (exit {rec['rc']}):\n{rec['log_tail']}")
            rec = step("cp", ["cp", "-r", str(dst), str(dst_copy)], dst_copy, None, [dst_copy])
            if rec["rc"] != 0:
                raise RuntimeError(f"cp -r failed (exit {rec['rc']}):\n{rec['log_tail']}")
            if mk_yaml:
                rec = step("mergekit", mk_cmd, mk_out, mk_env, [mk_out, mk_copy])
                if rec["rc"] != 0 or not (mk_out / "config.json").is_file():
                    mk_yaml = None
                    mk["reason"] = f"mergekit-yaml failed (exit {rec['rc']}): {rec['log_tail'][-1500:]}"
                    print(f"  mergekit failed: not run again ({mk['reason'][:300]})", flush=True)
                else:
                    mk["ran"] = True
                    mk["reason"] = None
                    step("cp_mergekit", ["cp", "-r", str(mk_out), str(mk_copy)], mk_copy, None, [mk_copy])
        remove(dst_copy, mk_copy)
        lemon_output = check_lemon_output(src, dst, verify=args.quick)
        if mk["ran"]:
            mk["output"] = check_mergekit_output(mk_out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started

    summary = {what: summarize(runs, what)
               for what in ("imports", "lemon_dry_run", "lemon", "cp", "mergekit", "cp_mergekit")}
    lemon, cp, dry, imports = summary["lemon"], summary["cp"], summary["lemon_dry_run"], summary["imports"]
    above = lemon["peak_rss_bytes"] - dry["peak_rss_median_bytes"]
    limit = source["largest_tensor"]["bytes"] + 2 * max_shard_bytes
    x, xs = ratio(lemon, cp, "wall_s"), ratio(lemon, cp, "wall_incl_sync_s")
    dropped = [r["caches_dropped"] for r in runs]
    drop_summary = ("yes, before every run" if all(dropped) else "no" + (
        f" ({runs[0]['drop_error']}): the source and cp's input were read from the page cache" if drop
        else " (--quick or --drop-caches no): the source and cp's input were read from the page cache")
        if not any(dropped) else f"before {sum(dropped)} of {len(dropped)} runs")
    record = {
        "mode": "quick" if args.quick else "full", "case": name, "machine": info, "wall_s": total,
        "load": quiet,
        "config": {"source_sizes": case["source"], "target_sizes": case["target"], "runs": args.runs,
                   "max_shard_size": max_shard, "max_shard_bytes": max_shard_bytes,
                   "source_shard_size": source_shard, "source_shard_bytes": source_shard_bytes,
                   "lemon_command": expand, "workdir": str(work), "kept": args.keep,
                   "device": args.device, "backend": args.backend},
        "source": source, "expected_output_bytes": out_bytes, "largest_output_tensor_bytes": largest_out,
        "drop_caches": {"asked": drop, "dropped": dropped, "summary": drop_summary},
        "runs": runs, "summary": summary,
        "ratios": {"lemon_vs_cp": x, "lemon_vs_cp_incl_sync": xs,
                   "lemon_vs_cp_per_round": [a["wall_s"] / b["wall_s"] for a, b in zip(
                       [q for q in runs if q["what"] == "lemon"], [q for q in runs if q["what"] == "cp"])],
                   "mergekit_vs_its_cp": ratio(summary["mergekit"], summary["cp_mergekit"], "wall_s"),
                   "mergekit_vs_its_cp_incl_sync": ratio(summary["mergekit"], summary["cp_mergekit"],
                                                         "wall_incl_sync_s"),
                   "mergekit_vs_lemon_cp": ratio(summary["mergekit"], cp, "wall_s"),
                   # informative, not the target: lemon without its start-up
                   "lemon_reported_s": lemon["reported_s"],
                   "lemon_reported_vs_cp": None if lemon["reported_s"] is None else lemon["reported_s"] / cp["wall_s"],
                   "lemon_minus_imports_vs_cp": (lemon["wall_s"] - imports["wall_s"]) / cp["wall_s"]},
        "targets": {
            "time": {"limit_ratio": TIME_TARGET, "ratio": x, "ratio_incl_sync": xs,
                     "met": x <= TIME_TARGET, "met_incl_sync": xs <= TIME_TARGET},
            "rss": {"peak_rss_bytes": lemon["peak_rss_bytes"], "dry_run_rss_bytes": dry["peak_rss_median_bytes"],
                    "above_dry_run_bytes": above, "imports_rss_bytes": imports["peak_rss_median_bytes"],
                    "above_imports_bytes": lemon["peak_rss_bytes"] - imports["peak_rss_median_bytes"],
                    "largest_tensor_bytes": source["largest_tensor"]["bytes"],
                    "shard_bytes": max_shard_bytes, "limit_bytes": limit, "met": above <= limit},
        },
        "lemon_output": lemon_output, "mergekit": mk,
    }
    print()
    print(table(record))
    if mk["ran"]:
        mks = summary["mergekit"]
        print(f"mergekit {mk.get('version')}: depth up-scaling {src_layers} -> {mk_layers} layers "
              f"(slices {slices}), {_size(mks['output_bytes'])} out; {mks['wall_s']:.1f} s = "
              f"{record['ratios']['mergekit_vs_its_cp']:.2f}x cp -r of its output; peak RSS "
              f"{_size(mks['peak_rss_bytes'])} = {mks['peak_rss_bytes'] / mks['output_bytes']:.2f}x its output")
    else:
        print(f"mergekit: not run: {mk['reason']}")
    check = lemon_output
    print(f"lemon's output: open_checkpoint {'ok' if check['ok'] else 'FAILED: ' + check.get('error', '')}"
          + (f", {check['tensors']} tensors, hidden {check['hidden_size']}" if check["ok"] else "")
          + (f"; lemon verify: relative output difference {check['verify']['output_relative']:.2e} "
             f"({'PASS' if check['verify']['passed'] else 'FAIL'})" if "verify" in check else ""))
    print(f"\nbenchmark wall time {total:.0f}s" + ("" if args.keep else f"; removed {work}"))
    stem = out / ("bench_checkpoint" if args.device == "cpu" else f"bench_checkpoint_{args.device}")
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    written = [stem.with_suffix(".json")]
    if plot(record, stem.with_suffix(".png")):
        written.append(stem.with_suffix(".png"))
    print("wrote " + " and ".join(str(p) for p in written))
    return 0


def _bf16():
    import torch

    return torch.bfloat16


if __name__ == "__main__":
    sys.exit(main())
