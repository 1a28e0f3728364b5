"""Executor throughput and whole-model expansion on the device at hand, per backend.

    python benchmarks/bench_kernels.py [--quick] [--out benchmarks/results] [--skip-model]

Section 1, one tensor: for each backend that runs on the device (CUDA: triton and reference;
CPU: reference), each dtype and each size (Llama-shaped x2 widenings of one weight, the largest
outputs several GB on a GPU), the executor's median time beside a ``clone()`` and a ``copy_`` of
the output's size in the same run; effective bandwidth = (bytes read + bytes written) / time, and
the ratios to ``copy_`` (which reads and writes the output's size). Noise on.

Section 2, a whole model (GPU, skipped with --skip-model or on a CPU): an 8B-parameter
Llama-shaped model (random bf16 weights, built on the meta device and filled, never randomly
initialized) widened x2 with ``lemon.expand_`` (in place: source and target together would not
fit an 80 GB card), its time against the byte floor (source read + target written at the
``copy_`` bandwidth), and its peak GPU memory against final model + largest source tensor.

On a GPU, times are ``triton.testing.do_bench`` medians (device events); on a CPU, medians of
``time.perf_counter`` around synchronized runs. Prints a table, writes
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
# (label, source view shape, target view shape): x2 widenings of Llama-shaped weights
SIZES = [
    ("q_proj 2048->4096", (2048, 2048), (4096, 4096)),
    ("up_proj 4096->8192", (14336, 4096), (28672, 8192)),
    ("embed 128k x 4096->8192", (128256, 4096), (128256, 8192)),
]
QUICK_SIZES = [("tiny 64->128", (96, 64), (192, 128)), ("small 256->512", (688, 256), (1376, 512))]
LLAMA_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=14336, vocab_size=128256)
LLAMA_8B_X2 = dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=16)


def weight_plan(source_shape, target_shape):
    """The plan of a fan-in weight: rows copied circularly, columns split with zero-sum noise."""
    from lemon import maps
    from lemon.noise import tensor_key
    from lemon.plan import Axis, TensorPlan

    rows = maps.circular(target_shape[0], source_shape[0])
    cols = maps.circular(target_shape[1], source_shape[1])
    return TensorPlan(name="w", source="w", source_shape=source_shape, shape=target_shape, split=1,
                      axes=(Axis(rows), Axis(cols, maps.split_scale(cols))), noise_axis=1, noise_std=0.02,
                      noise_key=tensor_key(0, "w"))


def timer(device):
    """median seconds of fn() on ``device``."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3

    def measure(fn, repeats=5):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    return measure


def tensor_section(device, backends, dtypes, sizes) -> list[dict]:
    import torch

    from lemon.backends import BACKENDS

    measure = timer(device)
    rows = []
    for label, source_shape, target_shape in sizes:
        plan = weight_plan(source_shape, target_shape)
        for dtype in dtypes:
            source = torch.randn(source_shape, device=device).to(dtype)
            out = torch.empty(target_shape, device=device, dtype=dtype)
            scratch = torch.empty_like(out)
            out_bytes = out.numel() * out.element_size()
            moved = out_bytes + source.numel() * source.element_size()
            clone_s = measure(lambda: out.clone())
            copy_s = measure(lambda: scratch.copy_(out))
            for name in backends:
                run = BACKENDS[name].load()
                seconds = measure(lambda: run(plan, source, out))
                rows.append({"tensor": label, "dtype": str(dtype).removeprefix("torch."), "backend": name,
                             "source_shape": source_shape, "target_shape": target_shape, "seconds": seconds,
                             "clone_s": clone_s, "copy_s": copy_s, "gb_per_s": moved / seconds / GB,
                             "copy_gb_per_s": 2 * out_bytes / copy_s / GB,
                             "vs_copy": (moved / seconds) / (2 * out_bytes / copy_s)})
                print(f"  {label:<26} {rows[-1]['dtype']:<9} {name:<9} {seconds * 1e3:9.2f} ms "
                      f"{rows[-1]['gb_per_s']:8.1f} GB/s  {100 * rows[-1]['vs_copy']:5.1f}% of copy_", flush=True)
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

    labels = sorted({(r["tensor"], r["dtype"]) for r in rows}, key=lambda t: (t[1], t[0]))
    backends = sorted({r["backend"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(labels)), 4.5))
    width = 0.8 / (len(backends) + 1)
    for k, name in enumerate(backends + ["copy_"]):
        ys = []
        for label in labels:
            match = [r for r in rows if (r["tensor"], r["dtype"]) == label and (name == "copy_" or r["backend"] == name)]
            ys.append((match[0]["copy_gb_per_s"] if name == "copy_" else match[0]["gb_per_s"]) if match else 0)
        ax.bar([i + (k - len(backends) / 2) * width for i in range(len(labels))], ys, width, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([f"{t}\n{d}" for t, d in labels], fontsize=7)
    ax.set_ylabel("GB/s (bytes read + written / time)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
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
    from lemon.backends import BACKENDS

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = [name for name in ("triton", "reference") if BACKENDS[name].runs_on(device)]
    if device.type == "cpu":
        backends = ["reference"]  # the interpreter is for correctness, not speed
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"lemon executor benchmark on {name}: backends {backends}, lemon {lemon.__version__}", flush=True)
    sizes = QUICK_SIZES if args.quick or device.type == "cpu" else SIZES
    dtypes = [torch.bfloat16, torch.float32]
    rows = tensor_section(device, backends, dtypes, sizes)
    model = None
    if device.type == "cuda" and not args.skip_model and not args.quick:
        print("  8B Llama shape x2 with expand_ ...", flush=True)
        model = model_section(device)
        print(f"  whole model: {model['seconds']:.2f} s, {model['vs_floor']:.2f}x the byte floor; peak "
              f"{model['peak_bytes'] / GB:.1f} GB = {100 * model['peak_vs_bound']:.1f}% of final + largest source")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_kernels_{device.type}"
    stem.with_suffix(".json").write_text(json.dumps({"device": name, "tensors": rows, "model": model}, indent=1))
    written = [stem.with_suffix(".json")]
    if plot(rows, stem.with_suffix(".png"), f"lemon executors on {name}"):
        written.append(stem.with_suffix(".png"))
    print("wrote " + " and ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
