"""Executor throughput and whole-model expansion on the device at hand, per backend.

    python benchmarks/bench_kernels.py [--quick] [--out benchmarks/results] [--skip-model]

Section 1, one tensor: for each backend that runs on the device (CUDA: triton, cuda where
lemon's extension has the CUDA executor, and reference; CPU: reference, and cpp where lemon's
C++ extension is built), each dtype, each size (Llama-shaped x2 widenings of one weight; on a
GPU the largest outputs are several GB, on a CPU sizes that the reference executor gets through
in a few minutes on 2 cores) and noise on (the default std 0.02) and off (``noise_std=0``:
plain copies and splits), the executor's median time writing into a preallocated output, beside
a ``clone()`` and a ``copy_`` of the output's size measured in the same run; the ratios of the
time to both, the effective bandwidth = (bytes read + bytes written) / time, and its ratio to
``copy_``'s (which reads and writes the output's size).

Section 2, a whole model (GPU, skipped with --skip-model, --quick or on a CPU): an
8B-parameter Llama-shaped model (random bf16 weights, built on the meta device and filled,
never randomly initialized) widened x2 with ``lemon.expand_`` (in place: source and target
together would not fit an 80 GB card), its time against the byte floor (source read + target
written at the ``copy_`` bandwidth), and its peak GPU memory against final model + largest
source tensor.

On a GPU, times are ``triton.testing.do_bench`` medians (device events); on a CPU, medians of
``time.perf_counter`` around synchronized runs after a warm-up. Prints a table, writes
``<out>/bench_kernels_<device>.json`` and ``.png``. It benchmarks the lemon of this checkout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GB = 1e9
NOISE_STD = 0.02  # noise on: a typical initializer_range
MAIN_DTYPES = ("bfloat16", "float32")
ALL_DTYPES = MAIN_DTYPES + ("float16", "float64")
# (label, source view shape, target view shape, dtypes): x2 widenings of Llama-shaped weights
SIZES = [  # a GPU: outputs up to 2 GB of bf16
    ("q_proj 2048->4096", (2048, 2048), (4096, 4096), ALL_DTYPES),
    ("up_proj 4096->8192", (14336, 4096), (28672, 8192), MAIN_DTYPES),
    ("embed 128k x 4096->8192", (128256, 4096), (128256, 8192), MAIN_DTYPES),
]
CPU_SIZES = [  # a CPU: the reference executor gets through these in minutes on 2 cores (outputs <= 0.5 GB)
    ("q_proj 2048->4096", (2048, 2048), (4096, 4096), ALL_DTYPES),
    ("up_proj 2048->4096", (5632, 2048), (11264, 4096), MAIN_DTYPES),
    ("embed 32k x 2048->4096", (32000, 2048), (32000, 4096), MAIN_DTYPES),
]
QUICK_SIZES = [("tiny 64->128", (96, 64), (192, 128), ALL_DTYPES),
               ("small 256->512", (688, 256), (1376, 512), MAIN_DTYPES)]
LLAMA_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=14336, vocab_size=128256)
LLAMA_8B_X2 = dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=16)


def weight_plan(source_shape, target_shape, noise_std: float = NOISE_STD):
    """The plan of a fan-in weight: rows copied circularly, columns split with zero-sum noise
    (``noise_std=0``: no noise, plain splits)."""
    from lemon import maps
    from lemon.noise import tensor_key
    from lemon.plan import Axis, TensorPlan

    rows = maps.circular(target_shape[0], source_shape[0])
    cols = maps.circular(target_shape[1], source_shape[1])
    return TensorPlan(name="w", source="w", source_shape=source_shape, shape=target_shape, split=1,
                      axes=(Axis(rows), Axis(cols, maps.split_scale(cols))), noise_axis=1, noise_std=noise_std,
                      noise_key=tensor_key(0, "w"))


def executor(name: str):
    """The executor function of backend ``name`` (the contract of ``lemon.reference.execute``)."""
    if name == "reference":
        from lemon.reference import execute
        return execute
    if name == "cpp":
        from lemon.native import execute_cpu
        return execute_cpu
    if name == "cuda":
        from lemon.native import execute_cuda
        return execute_cuda
    if name == "triton":
        from lemon_kernels.executor import execute
        return execute
    raise ValueError(f"unknown backend {name!r}")


def device_backends(device) -> list[str]:
    """The backends benchmarked on ``device``: the compiled ones where this install has them."""
    from lemon import native
    from lemon.backends import BACKENDS

    if device.type == "cuda":  # Triton's CPU interpreter is for correctness, not speed: GPU only
        names = ["triton"] + (["cuda"] if native.has_cuda_executor() else []) + ["reference"]
    else:
        names = ["reference"] + (["cpp"] if native.built() else [])
    return [name for name in names if BACKENDS[name].runs_on(device)]


def timer(device):
    """median seconds of fn() on ``device``."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3

    def measure(fn, repeats=5):
        start = time.perf_counter()
        fn()  # warm-up
        if time.perf_counter() - start > 2.0:  # a slow one: fewer repeats
            repeats = 3
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    return measure


def tensor_section(device, backends, sizes) -> list[dict]:
    import torch

    measure = timer(device)
    runs = {name: executor(name) for name in backends}
    rows = []
    for label, source_shape, target_shape, dtypes in sizes:
        plans = {True: weight_plan(source_shape, target_shape), False: weight_plan(source_shape, target_shape, 0.0)}
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            source = torch.randn(source_shape, device=device).to(dtype)
            out = torch.empty(target_shape, device=device, dtype=dtype)
            scratch = torch.empty_like(out)
            out.zero_()
            scratch.zero_()  # touched: copy_ is bandwidth only
            out_bytes = out.numel() * out.element_size()
            moved = out_bytes + source.numel() * source.element_size()
            clone_s = measure(lambda: out.clone())
            copy_s = measure(lambda: scratch.copy_(out))
            for name in backends:
                for noise in (True, False):
                    plan, run = plans[noise], runs[name]
                    seconds = measure(lambda: run(plan, source, out))
                    rows.append({"tensor": label, "dtype": dtype_name, "backend": name, "noise": noise,
                                 "noise_std": plan.noise_std, "source_shape": source_shape,
                                 "target_shape": target_shape, "out_bytes": out_bytes, "seconds": seconds,
                                 "clone_s": clone_s, "copy_s": copy_s,
                                 "ratio_clone": seconds / clone_s, "ratio_copy": seconds / copy_s,
                                 "gb_per_s": moved / seconds / GB,
                                 "clone_gb_per_s": 2 * out_bytes / clone_s / GB,
                                 "copy_gb_per_s": 2 * out_bytes / copy_s / GB,
                                 "vs_copy": (moved / seconds) / (2 * out_bytes / copy_s)})
                    r = rows[-1]
                    print(f"  {label:<24} {dtype_name:<9} {name:<9} {'on' if noise else 'off':<5} "
                          f"{seconds * 1e3:9.3f} ms {r['ratio_clone']:7.2f} {r['ratio_copy']:7.2f} "
                          f"{r['gb_per_s']:8.2f} {100 * r['vs_copy']:6.1f}%   "
                          f"(clone {clone_s * 1e3:.3g} ms, copy_ {copy_s * 1e3:.3g} ms)", flush=True)
            source = out = scratch = None  # freed before the next dtype's
    return rows


def model_section(device) -> dict:
    """expand_ of an 8B Llama shape x2 on the GPU: time vs byte floor, peak memory vs the bound."""
    import torch
    import transformers as T

    import lemon

    T.logging.set_verbosity_error()
    with torch.device("meta"):
        model = T.LlamaForCausalLM(T.LlamaConfig(**LLAMA_8B, tie_word_embeddings=False))
    model.to(torch.bfloat16)
    model.to_empty(device=device)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0, 0.02)
            else:
                param.fill_(1.0)  # norm gains
    for module in model.modules():  # rotary inv_freq: to_empty left it uninitialized
        if type(module).__name__.endswith("RotaryEmbedding"):
            fresh = type(module)(config=model.config, device=device)
            module.inv_freq = fresh.inv_freq.to(device)
    source_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    lemon.expand_(model, backend="triton", progress=False, **LLAMA_8B_X2)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base + source_bytes
    final = sum(p.numel() * p.element_size() for p in model.parameters())
    probe = torch.empty(2 * 1024**3, dtype=torch.uint8, device=device)  # 2 GiB: fits beside the model
    target = torch.empty_like(probe)
    copy_s = timer(device)(lambda: target.copy_(probe))
    floor_s = (source_bytes + final) / (2 * probe.numel() / copy_s)
    return {"source_bytes": source_bytes, "final_bytes": final, "largest_source_bytes": largest,
            "seconds": seconds, "floor_s": floor_s, "vs_floor": seconds / floor_s, "peak_bytes": peak,
            "peak_bound_bytes": final + largest, "peak_vs_bound": peak / (final + largest)}


def plot(rows, path: Path, title: str) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib missing (pip install matplotlib): no chart", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = []  # (tensor, dtype) in the order measured
    for r in rows:
        if (r["tensor"], r["dtype"]) not in labels:
            labels.append((r["tensor"], r["dtype"]))
    backends = []
    for r in rows:
        if r["backend"] not in backends:
            backends.append(r["backend"])
    series = [(f"{b}, noise {'on' if noise else 'off'}", b, noise) for b in backends for noise in (True, False)]
    series += [("clone()", None, "clone_gb_per_s"), ("copy_", None, "copy_gb_per_s")]
    fig, ax = plt.subplots(figsize=(max(6.0, (0.6 + 0.3 * len(series)) * len(labels)), 4.8))
    width = 0.84 / len(series)
    colors = plt.get_cmap("tab20").colors
    for k, (name, backend, what) in enumerate(series):
        ys = []
        for label in labels:
            match = [r for r in rows if (r["tensor"], r["dtype"]) == label
                     and (backend is None or (r["backend"], r["noise"]) == (backend, what))]
            ys.append((match[0][what] if backend is None else match[0]["gb_per_s"]) if match else 0)
        ax.bar([i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))], ys, width, label=name,
               color=colors[k % len(colors)])
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([f"{t}\n{d}" for t, d in labels], fontsize=7)
    ax.set_ylabel("GB/s (bytes read + written / time)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny tensors: a smoke test of the script")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--skip-model", action="store_true", help="skip the 8B whole-model section")
    args = parser.parse_args(argv)

    import torch

    import lemon
    from lemon import native

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = device_backends(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"lemon executor benchmark on {name} ({torch.get_num_threads()} threads): backends {backends}, "
          f"lemon {lemon.__version__}, extension {native.build_info() or 'not built'}", flush=True)
    sizes = QUICK_SIZES if args.quick else SIZES if device.type == "cuda" else CPU_SIZES
    started = time.perf_counter()
    print(f"  {'tensor':<24} {'dtype':<9} {'backend':<9} {'noise':<5} {'time':>12} {'x clone':>7} "
          f"{'x copy_':>7} {'GB/s':>8} {'of copy_ GB/s':>13}", flush=True)
    rows = tensor_section(device, backends, sizes)
    model = None
    if device.type == "cuda" and not args.skip_model and not args.quick:
        print("  8B Llama shape x2 with expand_ ...", flush=True)
        model = model_section(device)
        print(f"  whole model: {model['seconds']:.2f} s, {model['vs_floor']:.2f}x the byte floor; peak "
              f"{model['peak_bytes'] / GB:.1f} GB = {100 * model['peak_vs_bound']:.1f}% of final + largest source")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_kernels_{device.type}"
    record = {"device": name, "device_type": device.type, "mode": "quick" if args.quick else "full",
              "backends": backends, "build_info": native.build_info(), "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "lemon": lemon.__version__,
              "noise_std": NOISE_STD, "wall_s": time.perf_counter() - started, "tensors": rows, "model": model}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    written = [stem.with_suffix(".json")]
    if plot(rows, stem.with_suffix(".png"), f"lemon executors ({', '.join(backends)}) on {name}, "
            f"noise on and off, beside clone() and copy_ of the output"):
        written.append(stem.with_suffix(".png"))
    print("wrote " + " and ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
