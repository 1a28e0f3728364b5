"""Compile report: what the kernel becomes on a real GPU, checked on a machine without one.

    python -m lemon_kernels.report [--arch 80|90] [--json FILE]

Triton cross-compiles: for every specialization of :func:`~lemon_kernels.kernel.expand_segment`
that the executor launches on the plans of representative expansions (GPT-2, Llama with GQA,
BERT, ViT; widths, depth, non-multiples, a rearranged head map, a window; fp32, bf16, fp16,
fp64), this compiles PTX and a cubin for the target and reports, per specialization:
registers per thread, local memory (spills), whether the loads and stores of the contiguous
axis are vectorized (``ld/st.global.v2/v4``), whether the PTX has any fused multiply-add or
approximate division on floats (either would break bit-identity with the reference), and SASS
instructions per output element: for one tile written once (the whole kernel, static), and the
marginal cost of each further replica, read from the kernel's two loops: along the other axis
(the inner loop: scales, the add, rounding, the store) and along the noise axis (the outer
loop less the inner: one hash and the noise). A tile with k_noise x k_other replicas costs
about (whole + (k_noise - 1) * noise + (k_noise * k_other - 1) * other) / (k_noise * k_other)
per element. The exit status is 1 if any
specialization fails to compile, spills, or has a fused or approximate float operation.

Plans come from models built on the meta device, and launches are listed without data, so
this needs no memory and no GPU. Run it without TRITON_INTERPRET (it compiles real kernels).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TYPE_NAMES = {"float32": "fp32", "float64": "fp64", "bfloat16": "bf16", "float16": "fp16",
              "int16": "i16", "int32": "i32", "int64": "i64"}
DTYPES = ("float32", "bfloat16", "float16", "float64")


def representative_plans():
    """(label, TensorPlan) for every tensor of a few expansions of meta-device models."""
    import torch
    import transformers as T

    import lemon

    T.logging.set_verbosity_error()
    models = [
        ("gpt2 x2 + 24 layers", T.GPT2LMHeadModel, T.GPT2Config(vocab_size=1000),
         dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=24)),
        ("gpt2 768 -> 1024", T.GPT2LMHeadModel, T.GPT2Config(vocab_size=1000), dict(hidden_size=1024)),
        ("llama GQA x2", T.LlamaForCausalLM,
         T.LlamaConfig(hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=4,
                       intermediate_size=2816, vocab_size=1000),
         dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=8,
              num_hidden_layers=3)),
        ("llama GQA rearranged", T.LlamaForCausalLM,
         T.LlamaConfig(hidden_size=512, num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=2,
                       intermediate_size=1024, vocab_size=1000),
         dict(num_attention_heads=12, num_key_value_heads=6, hidden_size=768)),
        ("bert x2 + depth", T.BertForMaskedLM, T.BertConfig(vocab_size=1000), dict(hidden_size=1536, num_hidden_layers=14)),
        ("vit 768 -> 1024", T.ViTForImageClassification, T.ViTConfig(), dict(hidden_size=1024)),
    ]
    for label, cls, config, sizes in models:
        with torch.device("meta"):
            model = cls(config)
        plan = lemon.expand_plan(model, **sizes)
        for name, tensor_plan in plan.tensors.items():
            yield label, tensor_plan
        largest = max(plan.tensors.values(), key=lambda p: p.view_shape[0] * p.view_shape[1])
        rows = largest.view_shape[0]
        yield label + " (a window)", largest.restrict(0, rows // 3, rows // 3 + 77)


def specializations():
    """Unique (signature, constexprs, attrs, example) of the launches of the representative plans."""
    import torch

    from .executor import launches
    from .kernel import expand_segment

    names = expand_segment.arg_names
    found = {}
    for label, plan in representative_plans():
        for dtype in DTYPES:
            source = torch.empty(plan.source_shape, dtype=getattr(torch, dtype), device="meta")
            (r0, r1), (c0, c1) = plan.block
            out = torch.empty((r1 - r0) * (c1 - c0), dtype=source.dtype, device="meta")
            for launch in launches(plan, source, out):
                signature, attrs = {}, {}
                for i, name in enumerate(names):
                    if name in launch.constexprs:
                        signature[name] = "constexpr"
                        continue
                    value = launch.args[i]
                    if isinstance(value, torch.Tensor):
                        signature[name] = "*" + TYPE_NAMES[str(value.dtype).removeprefix("torch.")]
                        attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
                    else:
                        signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
                        if value % 16 == 0 and name not in expand_segment.do_not_specialize:
                            attrs[(i,)] = [["tt.divisibility", 16]]
                constexprs = {(names.index(k),): v for k, v in launch.constexprs.items()}
                key = (tuple(signature.items()), tuple(sorted((k, str(v)) for k, v in constexprs.items())),
                       tuple(sorted(attrs)))
                found.setdefault(key, (signature, constexprs, attrs, f"{label}: {plan.name} ({dtype})",
                                       launch.constexprs))
    return list(found.values())


def _per(value, per_thread: float) -> str:
    return f"{'-':>6}" if value is None or per_thread < 1 else f"{value:>6.1f}"


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_one(signature, constexprs, attrs, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .executor import NUM_WARPS
    from .kernel import expand_segment

    kernel = triton.compile(ASTSource(expand_segment, signature, constexprs, attrs),
                            target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": NUM_WARPS, "enable_fp_fusion": False})
    ptx = kernel.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True,
                              text=True, check=True).stdout
    field = lambda name: int(re.search(rf"\b{name}:(\d+)", usage).group(1))  # noqa: E731
    return {
        "registers": field("REG"), "local_bytes": field("LOCAL"), "stack_bytes": field("STACK"),
        "vector_loads": len(re.findall(r"ld\.global(?:\.[a-z0-9]+)*\.v[24]", ptx)),
        "vector_stores": len(re.findall(r"st\.global(?:\.[a-z0-9]+)*\.v[24]", ptx)),
        "float_fma": len(re.findall(r"\bfma\.[a-z.]*f(?:16|32|64)\b", ptx)),
        "approximate_div": len(re.findall(r"\b(?:div\.(?:approx|full)|rcp\.approx)\b", ptx)),
        "sass_instructions": len(re.findall(r"^\s+/\*[0-9a-f]{4}\*/", sass, re.M)),
        "loops": _loop_lengths(sass),
    }


def _loop_lengths(sass: str) -> list[int]:
    """Instruction counts of the kernel's loops (a backward branch closes one), innermost first."""
    lines = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4})\*/\s+([^;]*);", sass)]
    index = {address: i for i, (address, _) in enumerate(lines)}
    loops = []
    for i, (address, instruction) in enumerate(lines):
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", instruction)
        if target and int(target.group(1), 16) < address and int(target.group(1), 16) in index:
            loops.append(i - index[int(target.group(1), 16)] + 1)
    return sorted(loops)


def _compile_or_error(spec, arch: int):
    try:
        return compile_one(*spec[:3], arch)
    except Exception as err:  # noqa: BLE001  (handed back to be reported, not raised)
        return RuntimeError(f"{type(err).__name__}: {err}")


def _compile_all(specs, args):
    """Each specialization's metrics (or the error that stopped its compile), in order. The
    compiles are independent and each runs LLVM and ptxas for a second or more on one core, so
    they run in worker processes (spawned, not forked: the parent has torch's thread pools running)."""
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial
    from multiprocessing import get_context

    work = partial(_compile_or_error, arch=args.arch)
    if args.jobs <= 1:
        yield from map(work, specs)
        return
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        yield from pool.map(work, [spec[:3] for spec in specs])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=[80, 90], help="sm_80 (A100) or sm_90 (H100)")
    parser.add_argument("--json", help="also write every number to this file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compiles in parallel (default: one per CPU)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET: the report compiles real kernels", file=sys.stderr)
        return 2
    from .executor import NUM_WARPS

    rows, bad = [], 0
    specs = specializations()
    print(f"lemon_kernels compile report: {len(specs)} specializations of expand_segment for sm_{args.arch}")
    head = (f"{'dtype':<5} {'out':<4} {'noise':<5} {'next':<5} {'flags':<16} {'tile':>7} {'regs':>4} "
            f"{'spill':>5} {'ld.v':>4} {'st.v':>4} {'fma':>3} {'div':>3} {'tile':>6} {'+noise':>6} {'+other':>6}  example")
    print(head + "\n" + "-" * len(head))
    for (signature, constexprs, attrs, example, flags), metrics in zip(specs, _compile_all(specs, args)):
        if isinstance(metrics, Exception):  # a failed compile is a finding, reported and counted
            bad += 1
            print(f"FAILED to compile {example}: {metrics}")
            continue
        per_thread = flags["BLOCK_R"] * flags["BLOCK_C"] / (32 * NUM_WARPS)
        metrics["sass_per_element"] = metrics["sass_instructions"] / per_thread
        loops = metrics["loops"]
        metrics["other_replica_per_element"] = loops[0] / per_thread if loops else None
        metrics["noise_replica_per_element"] = ((loops[-1] - loops[0]) / per_thread
                                                if len(loops) > 1 and flags["NOISE_AXIS"] >= 0 else None)
        spills = metrics["local_bytes"] + metrics["stack_bytes"]
        bad += bool(spills or metrics["float_fma"] or metrics["approximate_div"])
        rows.append({"example": example, "constexprs": {k: str(v) for k, v in flags.items()},
                     "signature": signature, **metrics})
        marks = "".join(c for c, on in (("r", flags["ROW_AFFINE"]), ("c", flags["COL_AFFINE"]),
                                         ("S", flags["SPECIALS"]), ("w", flags["WIDE_COUNTERS"]),
                                         ("R", flags["HAS_ROW_SCALE"]), ("C", flags["HAS_COL_SCALE"])) if on)
        print(f"{str(flags['COMPUTE']).removeprefix('fp'):<5} {['same', 'bf16', 'fp16'][flags['OUT_KIND']]:<4} "
              f"{flags['NOISE_AXIS']:<5} {'table' if flags['NEXT_TABLE'] else 'impl':<5} {marks:<16} "
              f"{flags['BLOCK_R']}x{flags['BLOCK_C']:<4} {metrics['registers']:>4} {spills:>5} "
              f"{metrics['vector_loads']:>4} {metrics['vector_stores']:>4} {metrics['float_fma']:>3} "
              f"{metrics['approximate_div']:>3} {_per(metrics['sass_per_element'], per_thread)} "
              f"{_per(metrics['noise_replica_per_element'], per_thread)} "
              f"{_per(metrics['other_replica_per_element'], per_thread)}  {example}")
    print("flags: r/c affine row/column base (no index loads), S specials (MEAN/ONE/ZERO), w counters "
          "above 2^32, R/C row/column scales; next: the next replica implied by the period or read "
          "from a table. SASS instructions per output element: tile = a tile written once (static), "
          "+noise / +other = each further replica along the noise / the other axis; '-' for tiles "
          "smaller than a thread block (tiny tensors: biases, norms), where per-element counts mean nothing")
    verdict = "OK" if not bad else f"{bad} specialization(s) failed, spilled or have fused/approximate float ops"
    print(f"{len(rows)} compiled for sm_{args.arch}: {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "specializations": rows}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
