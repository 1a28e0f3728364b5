"""What whole-model expansion costs: ``lemon.expand(..., backend=B)`` for each executor backend B
against the two memory-traffic ceilings of writing a model of the output's size.

    python benchmarks/bench_expand.py [--quick] [--out benchmarks/results] [--backends reference,cpp]
                                      [--cases 0,2] [--repeats 3] [--profile] [--contend N] [--no-verify]

Per case (random weights, built offline from transformers configs) it measures, in a fresh
subprocess so that earlier cases do not mask later ones' peak memory, and in that process every
backend of ``--backends`` (default ``reference,cpp`` where lemon's C++ extension is built, else
``reference``) one after the other on the same source model:

* ``expand``: wall time of ``lemon.expand(model, ..., backend=B, progress=False)`` (the
  backend's first run is reported on its own, and gives its peak memory; then the median of
  ``--repeats`` more runs, or just the first if it took more than 30 s), and the same with
  ``noise_std=0`` (no symmetry-breaking noise: what noise generation costs). Only the first
  backend's first run is cold in the whole sense; the later backends' first runs find
  lemon's planning code and the allocator warm;
* ``clone``: ``v.clone()`` of every output tensor (fresh allocation + copy of the output size),
  on the last backend's output: ``--repeats`` runs once per case, and one right before each
  timed expansion of every backend. The ratio to clone is the median of those pairs' ratios:
  the cost of faulting in fresh memory drifts on a VM, and a pair sees one memory state;
* ``copy_``: ``dst.copy_(v)`` of every output tensor into preallocated, already touched tensors
  (pure memory bandwidth), once per case;
* per backend, the peak resident set size of its first expansion (``VmHWM``, reset just before
  it, after ``malloc_trim``) against the byte floor: source model bytes + output model bytes.

Unless ``--no-verify``, the fp32 outputs are checked with ``lemon.verify`` and every backend's
output bits are hashed (sha256): the backends must write the same bits (not timed).

It prints a table (one row per case and backend), writes every raw number plus machine info to
``<out>/bench_expand.json`` (per case: the shared numbers at the top level, each backend's under
``["backends"][name]``) and, where matplotlib is installed, draws ``<out>/bench_expand.png``.
``--profile`` also runs cProfile on the first case with the first backend and records the
functions of ``lemon/`` with the largest cumulative time. ``--contend N`` runs N busy processes
beside every case (all its backends) and writes ``bench_expand_contended[_torch].{json,png}``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# benchmark the lemon of this checkout, whatever an editable install elsewhere points to
sys.path.insert(0, str(REPO))

REPEAT_LIMIT_S = 30.0  # a first run longer than this is not repeated
GB = 1e9

# --------------------------------------------------------------------------- cases

FULL_CASES = [
    dict(name="gpt2-s -> 1024/4096", family="gpt2", dtype="float32",
         source=dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257),
         target=dict(hidden_size=1024, intermediate_size=4096)),
    dict(name="gpt2-s -> 1536/6144 x24L", family="gpt2", dtype="float32",
         source=dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257),
         target=dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=24)),
    dict(name="llama-1024 -> 2048 (x2)", family="llama", dtype="bfloat16",
         source=dict(hidden_size=1024, num_hidden_layers=16, num_attention_heads=16,
                     num_key_value_heads=4, intermediate_size=2816, vocab_size=32000),
         target=dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                     num_key_value_heads=8)),
    dict(name="llama-1024 -> 2048 (x2)", family="llama", dtype="float32",
         source=dict(hidden_size=1024, num_hidden_layers=16, num_attention_heads=16,
                     num_key_value_heads=4, intermediate_size=2816, vocab_size=32000),
         target=dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32,
                     num_key_value_heads=8)),
]

FULL_CASES += [
    # the headline expansions of the research code lemon is compared with (see the README)
    dict(name="llama-0.95B -> 3.55B (x2)", family="llama", dtype="bfloat16",
         source=dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=32, intermediate_size=5632, vocab_size=32000),
         target=dict(hidden_size=4096, intermediate_size=11264, num_attention_heads=64,
                     num_key_value_heads=64)),
    dict(name="bert-base -> 24L-1536", family="bert", dtype="float32",
         source=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, vocab_size=30522),
         target=dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=24)),
    # replica groups of 16 on every split axis: the noise's cost must not grow with the group
    dict(name="gpt2-32 -> 512 (x16)", family="gpt2", dtype="float32",
         source=dict(n_embd=32, n_layer=12, n_head=4, vocab_size=50257),
         target=dict(hidden_size=512, intermediate_size=2048)),
]

QUICK_CASES = [
    dict(name="gpt2-tiny -> 96/320", family="gpt2", dtype="float32",
         source=dict(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, bos_token_id=0, eos_token_id=0),
         target=dict(hidden_size=96, intermediate_size=320)),
    dict(name="gpt2-tiny -> 128/512 x4L", family="gpt2", dtype="float32",
         source=dict(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, bos_token_id=0, eos_token_id=0),
         target=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4)),
    dict(name="llama-tiny -> x2", family="llama", dtype="bfloat16",
         source=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=176, vocab_size=1000),
         target=dict(hidden_size=128, intermediate_size=352, num_attention_heads=8, num_key_value_heads=4)),
    dict(name="llama-tiny -> x2", family="llama", dtype="float32",
         source=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=176, vocab_size=1000),
         target=dict(hidden_size=128, intermediate_size=352, num_attention_heads=8, num_key_value_heads=4)),
]


# --------------------------------------------------------------------------- memory

def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM, ru_maxrss) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> bool:
    """Give glibc's free heap memory back to the kernel (what RSS counts beyond live tensors)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def peak_rss_bytes() -> int:
    kb = _status_kb("VmHWM")
    if kb is None:  # no /proc: ru_maxrss, in kB on Linux
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


# --------------------------------------------------------------------------- models

def build_source(case: dict):
    """A random model of the case's shape, without transformers' (slow) default init: built on
    the meta device, materialized empty on the CPU, filled with N(0, 0.02) (norm gains 1,
    biases 0), ties and non-persistent buffers (rotary inv_freq) restored."""
    import torch
    import transformers as T
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    dtype = getattr(torch, case["dtype"])
    config_class, cls = {"gpt2": (T.GPT2Config, T.GPT2LMHeadModel), "llama": (T.LlamaConfig, T.LlamaForCausalLM),
                         "bert": (T.BertConfig, T.BertForMaskedLM)}[case["family"]]
    config = config_class(**case["source"])
    with torch.device("meta"):
        model = cls(config)
    model.to(dtype)
    model.to_empty(device="cpu")
    model.tie_weights()  # to_empty makes a new Parameter per module: re-tie the head
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1:  # LayerNorm / RMSNorm gains
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
    for module_name, module in model.named_modules():
        own = [n for n, b in module.named_buffers(recurse=False) if b is not None]
        if not own:
            continue
        # to_empty left these uninitialized (rotary inv_freq, BERT's position ids): rebuild the
        # module alone from the config and take its buffers
        with torch.device("cpu"):
            fresh = type(module)(config=model.config)
        for n in own:
            module._buffers[n] = fresh._buffers[n]
    model.eval()
    return model


def unique_tensors(model) -> list:
    """Every parameter and buffer once (tied parameters share one tensor)."""
    seen, out = set(), []
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def nbytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in unique_tensors(model))


def nparams(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() skips tied duplicates


# --------------------------------------------------------------------------- one case

RUSAGE: list[dict] = []  # per timed call: what it was, wall, user and system CPU seconds, page faults


def _timed(fn, label: str = ""):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    value = fn()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    RUSAGE.append({"what": label, "wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
                   "sys_s": after.ru_stime - before.ru_stime,
                   "minor_faults": after.ru_minflt - before.ru_minflt})
    return wall, value


def _repeat(fn, repeats: int, label: str) -> list[float]:
    """Wall times of ``repeats`` runs of ``fn``."""
    times = []
    for _ in range(repeats):
        gc.collect()
        times.append(_timed(fn, label)[0])
    return times


def _digest(tensors) -> str:
    """sha256 of the tensors' bytes, in order: every backend must write the same bits."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()[:16]


def run_case(case: dict, repeats: int, verify: bool, backends: list[str]) -> dict:
    """Every backend of ``backends`` on the same source, one after the other, in this process."""
    import torch
    import transformers as T

    import lemon
    import lemon.native
    import lemon.reference  # noqa: F401  (imported here so the RSS baseline includes every module)
    from lemon.backends import BACKENDS

    _ = T.GPT2LMHeadModel, T.LlamaForCausalLM, T.BertForMaskedLM  # transformers imports these lazily
    for name in backends:
        BACKENDS[name].load()
    lemon.native.built()  # loads the C++ extension, where there is one: the RSS baseline includes it
    result = {"case": case, "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg(),
              "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
              "backend_order": list(backends), "backends": {}}
    gc.collect()
    rss_start = rss_bytes()
    result["rss_start_bytes"] = rss_start
    t_build, small = _timed(lambda: build_source(case), "build source")
    result["source_build_s"] = t_build
    result["source_params"] = nparams(small)
    result["source_bytes"] = nbytes(small)

    def expand(backend: str, noise_std=None):
        return lemon.expand(small, backend=backend, progress=False, noise_std=noise_std, **case["target"])

    # phase 1: every backend's first run (peak memory, cold caches and allocator; its bits). For
    # the first backend the process has done nothing but build the source; before the later
    # ones, the previous output is dropped and freed heap is given back to the kernel
    big = None
    for backend in backends:
        this = result["backends"][backend] = {"loadavg_start": os.getloadavg()}
        big = None
        gc.collect()
        this["malloc_trim_before"] = _malloc_trim()
        rss_before = rss_bytes()
        this["peak_reset"] = reset_peak_rss()
        this["expand_first_s"], big = _timed(lambda: expand(backend), f"{backend}: expand (first)")
        this["rss_before_expand_bytes"] = rss_before
        this["peak_rss_bytes"] = peak_rss_bytes()
        this["rss_after_expand_bytes"] = rss_bytes()
        this["rss_after_malloc_trim_bytes"] = _malloc_trim() and rss_bytes()  # freed, kept by malloc
        this["target_params"] = nparams(big)
        this["output_bytes"] = nbytes(big)
        if "output_bytes" not in result:  # the same for every backend
            result["target_params"] = this["target_params"]
            result["output_bytes"] = this["output_bytes"]
            result["target_config"] = {k: getattr(big.config, k, None) for k in (
                "hidden_size", "n_embd", "intermediate_size", "n_inner", "num_attention_heads", "n_head",
                "num_key_value_heads", "num_hidden_layers", "n_layer") if getattr(big.config, k, None) is not None}
        if verify:
            this["output_sha256"] = _digest(unique_tensors(big))  # not timed
            if case["dtype"] == "float32":
                this["verify_output_relative"] = lemon.verify(small, big).output_relative

    # phase 2: the ceilings, on the output tensors of the last first run, kept to the end
    outputs = [t.detach() for t in unique_tensors(big)]
    del big
    clone_times = []
    for _ in range(repeats + 1):  # the first is a warm-up, like the expansion's first run
        gc.collect()
        t, clones = _timed(lambda: [v.clone() for v in outputs], "clone")
        clone_times.append(t)
        del clones
    result["clone_first_s"], result["clone_s"] = clone_times[0], clone_times[1:]
    dst = [torch.empty_like(v) for v in outputs]
    for d, v in zip(dst, outputs):  # touch every page first: copy_ below is bandwidth only
        d.copy_(v)

    def copy_all():
        for d, v in zip(dst, outputs):
            d.copy_(v)
    result["copy_s"] = [_timed(copy_all, "copy_")[0] for _ in range(repeats)]
    dst.clear()  # frees them (the closure above keeps the list)

    # phase 3: per backend, `repeats` timed runs (when the first took <= 30 s; else the first
    # run is the timing), each right after a clone of the output: the page-fault cost of fresh
    # memory drifts on a VM (the system time of the same faults varied 1.4-2.2 s), so the ratio
    # to clone() is taken pair by pair, both runs in the same memory state. Results are dropped:
    # every run allocates its output anew
    for backend in backends:
        this = result["backends"][backend]
        this["expand_s"], this["paired_clone_s"] = [], []
        for _ in range(repeats if this["expand_first_s"] <= REPEAT_LIMIT_S else 0):
            gc.collect()
            t, clones = _timed(lambda: [v.clone() for v in outputs], f"{backend}: clone (paired)")
            del clones
            this["paired_clone_s"].append(t)
            this["expand_s"] += _repeat(lambda: expand(backend), 1, f"{backend}: expand")
        if not this["expand_s"]:
            this["expand_s"] = [this["expand_first_s"]]
        this["expand_noise0_s"] = _repeat(lambda: expand(backend, 0.0), 1, f"{backend}: expand noise_std=0")
        if this["expand_noise0_s"][0] <= REPEAT_LIMIT_S:
            this["expand_noise0_s"] += _repeat(lambda: expand(backend, 0.0), repeats - 1,
                                               f"{backend}: expand noise_std=0")
        this["loadavg_end"] = os.getloadavg()
    outputs.clear()
    result["loadavg_end"] = os.getloadavg()
    result["worker_peak_rss_bytes"] = peak_rss_bytes()  # since the last reset: that backend's reruns too
    result["rusage"] = RUSAGE
    return result


def profile_case(case: dict, backend: str, top: int = 5) -> dict:
    """cProfile one expansion with ``backend``; the lemon/ functions with the largest cumulative time."""
    import cProfile
    import pstats

    import lemon

    small = build_source(case)
    lemon.expand(small, backend=backend, progress=False, **case["target"])  # warm up: as timed
    gc.collect()
    profiler = cProfile.Profile()
    profiler.enable()
    start = time.perf_counter()
    lemon.expand(small, backend=backend, progress=False, **case["target"])
    wall = time.perf_counter() - start
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, func) -> (cc, nc, tt, ct, callers)
    lemon_dir = str(Path(lemon.__file__).resolve().parent)
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in stats.items():
        if str(Path(file).resolve()).startswith(lemon_dir):
            rows.append({"function": f"lemon/{Path(file).resolve().relative_to(lemon_dir)}:{line}({func})",
                         "calls": nc, "tottime_s": tt, "cumtime_s": ct})
    rows.sort(key=lambda r: -r["cumtime_s"])
    # what the executor's time goes to, below the top-level entry points
    tottime = sorted(rows, key=lambda r: -r["tottime_s"])
    return {"case": case["name"], "dtype": case["dtype"], "backend": backend, "wall_s": wall,
            "top_cumulative": rows[:top + 3], "top_tottime": tottime[:top]}


# --------------------------------------------------------------------------- driver

CONTENDERS = {  # what runs beside the benchmark with --contend
    # a process that wants a whole core
    "python": "while True: pass",
    # another PyTorch program (a test run, a data loader): small elementwise operations on
    # OpenMP teams of its default size, whose threads spin at barriers
    "torch": "import torch\nx = torch.randn(1 << 17)\nwhile True: x.mul_(1.0)",
}


def _in_subprocess(mode: str, case: dict, repeats: int, verify: bool, backends: list[str],
                   contenders: int = 0, contender: str = "python") -> dict:
    spinners = [subprocess.Popen([sys.executable, "-c", CONTENDERS[contender]]) for _ in range(contenders)]
    try:
        result = _run_worker(mode, case, repeats, verify, backends)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    result["contenders"], result["contender"] = contenders, contender
    return result


def _run_worker(mode: str, case: dict, repeats: int, verify: bool, backends: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode,
               "--case", json.dumps(case), "--repeats", str(repeats), "--result", str(out),
               "--backends", ",".join(backends)]
        if verify:
            cmd.append("--verify")
        proc = subprocess.run(cmd, cwd=str(REPO))
        if proc.returncode != 0:
            raise RuntimeError(f"worker for {case['name']} ({case['dtype']}) failed with {proc.returncode}")
        return json.loads(out.read_text())


def machine_info(backends: list[str]) -> dict:
    """The common record (benchmarks/machine.py) and the backends this run measured."""
    from machine import machine_info as common

    return {**common(), "backend": list(backends), "device": "cpu"}


def summarize(r: dict) -> dict:
    """The case's shared numbers (ceilings, floor); sets ``r["backends"][name]["summary"]`` per backend."""
    clone = statistics.median(r["clone_s"])
    copy = statistics.median(r["copy_s"])
    moved = r["source_bytes"] + r["output_bytes"]
    for this in r["backends"].values():
        expand = statistics.median(this["expand_s"])
        noise0 = statistics.median(this["expand_noise0_s"])
        paired = [e / c for e, c in zip(this["expand_s"], this.get("paired_clone_s", []))]
        this["summary"] = {
            "expand_s": expand, "expand_noise0_s": noise0,
            # the median of the runs' ratios to the clone just before each (older files: medians)
            "ratio_clone": statistics.median(paired) if paired else expand / clone,
            # fastest over fastest: both in the memory state a VM gives least often (fresh pages
            # whose first touch costs little); on a machine whose faults cost the same every
            # time it is close to ratio_clone
            "ratio_clone_best": min(this["expand_s"]) / min(r["clone_s"] + this.get("paired_clone_s", [])),
            "ratio_copy": expand / copy,
            "noise_share": (expand - noise0) / expand,
            "gb_per_s": moved / expand / GB,
            "peak_rss_delta_bytes": this["peak_rss_bytes"] - r["rss_start_bytes"],
            "expand_rss_delta_bytes": this["peak_rss_bytes"] - this["rss_before_expand_bytes"],
        }
    digests = {this.get("output_sha256") for this in r["backends"].values()} - {None}
    return {"clone_s": clone, "copy_s": copy, "floor_bytes": moved,
            "same_bits": len(digests) == 1 if digests else None}


def _m(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _backends_of(results: list[dict]) -> list[str]:
    """Every backend the results hold, in the order they ran."""
    names = []
    for r in results:
        names += [b for b in r["backends"] if b not in names]
    return names


def table(results: list[dict]) -> str:
    head = (f"{'case':<26} {'dtype':<8} {'backend':<9} {'params src->tgt':>15} {'out GB':>7} {'expand s':>9} "
            f"{'1st s':>7} {'noise=0 s':>9} {'clone s':>8} {'x clone':>8} {'best x':>6} {'x copy_':>8} {'GB/s':>6} "
            f"{'peak RSS GB':>11} {'floor GB':>8} {'vs ref':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        shared = r["summary"]
        ref = r["backends"].get("reference")
        for backend, this in r["backends"].items():
            s = this["summary"]
            once = this["expand_first_s"] > REPEAT_LIMIT_S  # the first run was the only one
            speedup = f"{ref['summary']['expand_s'] / s['expand_s']:>5.1f}x" if ref else f"{'':>6}"
            lines.append(
                f"{r['case']['name']:<26} {r['case']['dtype']:<8} {backend:<9} "
                f"{_m(r['source_params']) + '->' + _m(r['target_params']):>15} "
                f"{r['output_bytes'] / GB:>7.3f} {s['expand_s']:>7.2f}{'¹' if once else '':<2} "
                f"{this['expand_first_s']:>7.2f} "
                f"{s['expand_noise0_s']:>9.2f} {shared['clone_s']:>8.3f} {s['ratio_clone']:>8.1f} "
                f"{s.get('ratio_clone_best', float('nan')):>6.1f} "
                f"{s['ratio_copy']:>8.1f} {s['gb_per_s']:>6.3f} "
                f"{s['peak_rss_delta_bytes'] / GB:>11.2f} {shared['floor_bytes'] / GB:>8.2f} {speedup}")
    lines.append("¹ one run (the first took > 30 s); otherwise the median of the repeats after a first, cold "
                 "run. The backends run one after the other in one process per case: clone s and the floor "
                 "are the case's; x clone is the median, over the timed runs, of each run's time over that "
                 "of a clone() of the output just before it; best x = the fastest run over the fastest clone of "
                 "the case. GB/s = (source + output bytes) / expand time; "
                 "peak RSS = peak of the backend's first expansion minus the worker's RSS before building "
                 "the source; floor = source + output bytes; vs ref = reference expand s / this expand s.")
    checked = [(r, b, this) for r in results for b, this in r["backends"].items() if "verify_output_relative" in this]
    if checked:
        lines.append("lemon.verify of the fp32 outputs, max relative output difference: " + ", ".join(
            f"{r['case']['name']} {b} {this['verify_output_relative']:.1e}" for r, b, this in checked))
    differ = [r for r in results if r["summary"].get("same_bits") is False]
    if differ:
        lines.append("OUTPUTS DIFFER between backends (sha256 of the output bytes): " + ", ".join(
            f"{r['case']['name']} ({r['case']['dtype']})" for r in differ))
    elif any(r["summary"].get("same_bits") for r in results) and len(_backends_of(results)) > 1:
        lines.append("every backend wrote the same bits (sha256 of the output tensors) in every case")
    return "\n".join(lines)


BACKEND_COLORS = {"reference": ("#d62728", "#ff9896"), "cpp": ("#9467bd", "#c5b0d5"),
                  "triton": ("#8c564b", "#c49c94"), "cuda": ("#e377c2", "#f7b6d2")}


def plot(results: list[dict], path: Path, title: str) -> bool:
    """Draw the chart to ``path``; False (and nothing written) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib missing (pip install matplotlib): no chart", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # per case: per backend, expand with noise and with noise_std=0; then the two ceilings
    series = []  # (legend label, color, backend (None: the case's ceilings), summary key)
    for backend in _backends_of(results):
        strong, light = BACKEND_COLORS.get(backend, ("#7f7f7f", "#c7c7c7"))
        series.append((f"lemon.expand ({backend})", strong, backend, "expand_s"))
        series.append((f"lemon.expand ({backend}), noise_std=0", light, backend, "expand_noise0_s"))
    series.append(("clone() of the output", "#1f77b4", None, "clone_s"))
    series.append(("copy_() into preallocated", "#2ca02c", None, "copy_s"))

    def value(r, backend, key):
        if backend is None:
            return r["summary"][key]
        this = r["backends"].get(backend)
        return None if this is None else this["summary"][key]

    def size(n):
        return f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"
    labels = [f"{r['case']['name']}\n{r['case']['dtype']}, {size(r['output_bytes'])} out" for r in results]
    width = 0.84 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, (1.2 + 0.45 * len(series)) * len(results)), 5.4))

    def x_of(i, k):
        return i + (k - (len(series) - 1) / 2) * width
    values = []
    for k, (label, color, backend, key) in enumerate(series):
        xs, ys = [], []
        for i, r in enumerate(results):
            y = value(r, backend, key)
            if y is not None:
                xs.append(x_of(i, k))
                ys.append(y)
        values += ys
        bars = ax.bar(xs, ys, width, label=label, color=color)
        for bar, y in zip(bars, ys):
            ax.annotate(f"{y:.3g}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                        fontsize=6, xytext=(0, 1), textcoords="offset points")
        if key == "expand_s":  # the backend's first (cold) run, and its ratio to clone
            firsts = [(x_of(i, k), r["backends"][backend]) for i, r in enumerate(results)
                      if backend in r["backends"]]
            values += [this["expand_first_s"] for _, this in firsts]
            ax.scatter([x for x, _ in firsts], [this["expand_first_s"] for _, this in firsts], marker="_",
                       s=max(60, 400 * width), color="black", linewidths=2, zorder=3,
                       label="lemon.expand, first (cold) run" if k == 0 else None)
            for x, this in firsts:
                top = max(this["summary"]["expand_s"], this["expand_first_s"])
                ratio = this["summary"]["ratio_clone"]
                ax.annotate(f"{ratio:.1f}x\nclone" if ratio < 10 else f"{ratio:.0f}x\nclone", (x, top), ha="center",
                            va="bottom", fontsize=7, fontweight="bold", xytext=(0, 9),
                            textcoords="offset points")
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log scale)")
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    if values:
        ax.set_ylim(min(values) / 2, max(values) * 12)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def default_backends() -> list[str]:
    """reference, and cpp where lemon's C++ extension is built."""
    import lemon.native
    return ["reference", "cpp"] if lemon.native.built() else ["reference"]


def parse_backends(text: str | None) -> list[str]:
    """The names of ``--backends``, checked: each must run on CPU tensors here."""
    import torch

    import lemon.native
    from lemon.backends import BACKENDS

    if text is None:
        return default_backends()
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError("--backends: no backend named")
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"--backends: unknown backend {name!r}; choose among {sorted(BACKENDS)}")
        if name in ("cpp", "cuda") and not lemon.native.built():
            raise ValueError(f"--backends: {name!r} needs lemon's C++ extension: {lemon.native.extension()}")
        if not BACKENDS[name].runs_on(torch.device("cpu")):  # lemon.expand would fall back to reference
            raise ValueError(f"--backends: {name!r} does not run on CPU tensors here "
                             f"(it needs {BACKENDS[name].where})")
    if len(set(names)) != len(names):
        raise ValueError("--backends: a backend is named twice")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test in seconds")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--backends", default=None, metavar="NAMES",
                        help="comma-separated backends, timed one after the other in each case's worker "
                             "(default: reference,cpp where lemon's C++ extension is built, else reference)")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile the first case with the first backend and record lemon's top "
                             "functions")
    parser.add_argument("--cases", default=None, help="comma-separated case indices to run (default all)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs after the first, cold one (per backend; also for the ceilings)")
    parser.add_argument("--contend", type=int, default=0, metavar="N",
                        help="run N busy processes (one core each) beside every case: how the executors "
                             "cope with a machine they do not have to themselves; results go to "
                             "bench_expand_contended[_torch].{json,png}")
    parser.add_argument("--contender", choices=sorted(CONTENDERS), default="python",
                        help="what the busy processes run: a Python loop (python) or small PyTorch "
                             "operations on OpenMP teams (torch)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip lemon.verify of the fp32 outputs and the comparison of the backends' "
                             "output bits (sanity checks, not timed)")
    # internal: one case in this (fresh) process
    parser.add_argument("--worker", choices=["run", "profile"], help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        backends = parse_backends(args.backends)
    except ValueError as error:
        parser.error(str(error))

    if args.worker:
        case = json.loads(args.case)
        result = (run_case(case, args.repeats, args.verify, backends) if args.worker == "run"
                  else profile_case(case, backends[0]))
        Path(args.result).write_text(json.dumps(result))
        return 0

    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.cases:
        cases = [cases[int(i)] for i in args.cases.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(backends)
    print(f"lemon expansion benchmark ({'quick' if args.quick else 'full'}): backends {', '.join(backends)}, "
          f"{info['cpu_count']} CPUs, torch {info['torch']} ({info['torch_threads']} threads), "
          f"{info['platform']}" + (f", {args.contend} busy {args.contender} process(es) beside it"
                                   if args.contend else ""), flush=True)
    started = time.perf_counter()
    results = []
    for case in cases:
        t0 = time.perf_counter()
        print(f"  {case['name']} ({case['dtype']}) ...", end=" ", flush=True)
        r = _in_subprocess("run", case, args.repeats, not args.no_verify, backends, args.contend,
                           args.contender)
        r["summary"] = summarize(r)
        results.append(r)
        print(", ".join(f"{b} {this['summary']['expand_s']:.2f}s" for b, this in r["backends"].items())
              + f"; case total {time.perf_counter() - t0:.0f}s", flush=True)
    profile = None
    if args.profile:
        print(f"  cProfile of {cases[0]['name']} ({cases[0]['dtype']}), backend {backends[0]} ...", flush=True)
        profile = _in_subprocess("profile", cases[0], 1, False, backends[:1])
    total = time.perf_counter() - started

    print()
    print(table(results))
    if profile:
        print(f"\ncProfile, {profile['case']} ({profile['dtype']}), backend {profile['backend']}, second run, "
              f"{profile['wall_s']:.1f}s under the profiler; lemon/ functions by cumulative time:")
        for row in profile["top_cumulative"]:
            print(f"  {row['cumtime_s']:8.2f}s cum {row['tottime_s']:7.2f}s own {row['calls']:6d} calls  "
                  f"{row['function']}")
        print("  by own time:")
        for row in profile["top_tottime"]:
            print(f"  {row['tottime_s']:8.2f}s own {row['cumtime_s']:7.2f}s cum {row['calls']:6d} calls  "
                  f"{row['function']}")
    print(f"\nbenchmark wall time {total:.0f}s")

    record = {"mode": "quick" if args.quick else "full", "machine": info, "backends": backends,
              "wall_s": total, "repeats": args.repeats, "repeat_limit_s": REPEAT_LIMIT_S,
              "contenders": args.contend, "contender": args.contender if args.contend else None,
              "results": results, "profile": profile}
    stem = "bench_expand" + ("_contended" if args.contend else "") + (
        "_torch" if args.contend and args.contender == "torch" else "")
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
    written = [out / f"{stem}.json"]
    beside = f", {args.contend} busy {args.contender} process(es) beside it" if args.contend else ""
    if plot(results, out / f"{stem}.png",
            f"lemon.expand (backends: {', '.join(backends)}) vs clone/copy_ of the output — "
            f"{info['cpu_count']}-core CPU{beside}, torch {info['torch']}"):
        written.append(out / f"{stem}.png")
    print("wrote " + " and ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
