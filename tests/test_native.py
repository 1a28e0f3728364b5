"""lemon's C++ extension (csrc/): built by the install, registered as torch operators that pass
torch.library.opcheck, never in the way when missing, its CPU loops vectorized, its CUDA kernel
compiled by nvcc for sm_90 here and run through a host harness where a GPU is.

That every executor gives the reference's bits is tests/test_executors.py's business.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lemon
from lemon import backends, maps, native
from lemon.noise import tensor_key
from lemon.plan import MEAN, ONE, ZERO, Axis, TensorPlan
from lemon.segments import check_out

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"


def test_the_extension_is_built_and_auto_picks_it_for_cpu_tensors():
    # the README's install command builds it on these machines: its absence is a failure here
    assert native.built(), native.extension()
    info = native.build_info()
    assert info["cpu_isa"] in info["cpu_isas"] and info["cpu_isas"][-1] == "generic"
    assert info["cuda"] == (torch.version.cuda is not None and native.has_cuda_executor())
    assert "cpp" in lemon.available_backends()
    assert backends.executor("auto", torch.device("cpu")) is native.execute_cpu
    assert backends.executor("cpp", torch.device("cpu")) is native.execute_cpu


# ---------------------------------------------------------------- the operators

def plans():
    """Plans whose segment pairs cover the operator's arguments: affine and table bases, noise on
    either axis, closed and table next replicas, scales, specials with their means, a window."""
    circ, scattered = maps.circular(40, 16), torch.randint(0, 9, (21,), generator=torch.Generator().manual_seed(0))
    yield TensorPlan(name="a", source="a", source_shape=(16, 9), shape=(40, 21), split=1,
                     axes=(Axis(circ, maps.split_scale(circ)), Axis(scattered)), noise_axis=0, noise_std=0.02,
                     noise_key=tensor_key(0, "a")), torch.bfloat16
    yield TensorPlan(name="b", source="b", source_shape=(9, 16), shape=(21, 40), split=1,
                     axes=(Axis(scattered), Axis(circ, maps.split_scale(circ))), noise_axis=1, noise_std=0.02,
                     noise_key=tensor_key(0, "b")), torch.float32
    rows = torch.tensor([0, 1, MEAN, ONE, ZERO, 1, 0, MEAN] * 3)
    cols = torch.cat([torch.arange(20) % 5, torch.tensor([MEAN, ONE, ZERO, MEAN])])
    specials = TensorPlan(name="c", source="c", source_shape=(2, 5), shape=(24, 24), split=1,
                          axes=(Axis(rows, torch.linspace(-2, 2, 24, dtype=torch.float64)), Axis(cols)))
    yield specials, torch.float64
    yield specials.restrict(0, 3, 20).restrict(1, 2, 23), torch.float16


@pytest.mark.parametrize("op_name", native.OPERATORS)
def test_the_operators_pass_opcheck(op_name):
    op = getattr(torch.ops.lemon, op_name).default
    calls = 0
    for plan, dtype in plans():
        source = torch.randn(plan.source_shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        out = check_out(plan, source, torch.full(plan.output_shape, float("nan"), dtype=dtype))
        for args in native.segment_calls(plan, source, out):
            torch.library.opcheck(op, args)  # schema (out mutated in place), fake, autograd, AOT dispatch
            calls += 1
    assert calls >= 4


def test_the_schema_writes_out_in_place():
    schema = str(torch.ops.lemon.expand_segment.default._schema)
    assert "Tensor(a!) out" in schema and schema.endswith("-> ()")


def one_call(dtype=torch.float32):
    plan, _ = next(plans())
    source = torch.randn(plan.source_shape).to(dtype)
    out = check_out(plan, source, None)
    return list(native.segment_calls(plan, source, out)[0])


@pytest.mark.parametrize("change,message", [
    (lambda a: a.__setitem__(9, [0, 999, 16, 0, 0]), "outside the output"),
    (lambda a: a.__setitem__(2, torch.full((21,), 12, dtype=torch.int64)), r"outside \[0, 11\]"),
    (lambda a: a.__setitem__(16, a[16].double()), "out must have the source's dtype"),
    (lambda a: a.__setitem__(11, 2), "noise_axis is 0, 1 or -1"),
    (lambda a: a.__setitem__(12, 1 << 33), "32-bit word"),
    (lambda a: [a.__setitem__(i, a[i].to(torch.int32)) for i in (0, 16)], "handles float32, float64, bfloat16"),
])
def test_bad_operator_arguments_are_refused_with_the_reason(change, message):
    args = one_call()
    change(args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.lemon.expand_segment(*args)


# ---------------------------------------------------------------- the MEAN side input in C++

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (3, 5), (17, 33), (1000, 3), (5, 4099), (257, 129), (45, 768)])
def test_the_cpp_mean_is_the_pairwise_tree_bit_for_bit(dtype, shape):
    """lemon.native.mean_along against lemon.plan.mean_along (itself checked against the tree
    written out in Python floats in test_reference.py), on any thread count and on a view."""
    from lemon.plan import mean_along

    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * torch.logspace(-3, 3, shape[1])).to(dtype)
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            for dim in (0, 1):
                assert torch.equal(native.mean_along(x, dim), mean_along(x, dim)), (count, dim)
    finally:
        torch.set_num_threads(threads)
    wide = torch.randn(shape[0], shape[1] + 5, generator=g).to(dtype)[:, 2:2 + shape[1]]  # rows strided apart
    for dim in (0, 1):
        assert torch.equal(native.mean_along(wide, dim), mean_along(wide, dim))


def test_the_cpp_mean_passes_opcheck_and_refuses_bad_input():
    x = torch.randn(37, 20)
    for dim in (0, 1):
        torch.library.opcheck(torch.ops.lemon.mean_along.default, (x, dim))
    with pytest.raises(RuntimeError, match="must be 2-D"):
        native.mean_along(torch.randn(2, 3, 4), 0)
    with pytest.raises(RuntimeError, match="dim must be 0 or 1"):
        native.mean_along(x, 2)
    with pytest.raises(RuntimeError, match="rows must be contiguous"):
        native.mean_along(x.T, 0)
    with pytest.raises(RuntimeError, match="fp32, fp64, bf16 or fp16"):
        native.mean_along(x.to(torch.int32), 0)


# ---------------------------------------------------------------- without the extension

def test_without_the_extension_lemon_works_and_cpp_says_how_to_build_it():
    code = """
import warnings, torch, transformers, lemon
from lemon import backends, native
assert not native.built() and 'LEMON_NO_EXT' in native.extension()
assert 'cpp' not in lemon.available_backends() and 'cuda' not in lemon.available_backends()
small = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
with warnings.catch_warnings():
    warnings.simplefilter('error')  # auto picks the reference quietly
    big = lemon.expand(small, hidden_size=64, progress=False)
assert lemon.verify(small, big).output_relative < 1e-5
for name in ('cpp', 'cuda'):
    try:
        lemon.expand(small, hidden_size=64, backend=name, progress=False)
    except RuntimeError as error:
        assert 'pip install --no-build-isolation' in str(error) and 'LEMON_NO_EXT' in str(error), error
    else:
        raise AssertionError(name + ' ran without the extension')
print('ok')
"""
    env = dict(os.environ, LEMON_NO_EXT="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.skipif(native.has_cuda_executor(), reason="this build has the CUDA executor")
def test_backend_cuda_without_a_cuda_build_says_why():
    with pytest.raises(RuntimeError, match="'cuda' is not in this build.*pip install --no-build-isolation"):
        backends.executor("cuda", torch.device("cpu"))


# ---------------------------------------------------------------- compiled code, checked at its source

MARKED = re.compile(r"lemon: vectorized \((\w+)\)")


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ (the extension is built with it on CI)")
@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_the_cpu_hot_loops_vectorize(isa, tmp_path):
    """GCC's own report (-fopt-info-vec) for the loops marked "lemon: vectorized" in kernel.inc
    and the mean tree it includes, compiled with the extension's flags: every marked loop
    vectorizes, the element loop in every dtype and variant (4 dtypes x 8 scale/noise variants;
    two fp32/fp64 copies become memcpy), at the variant's full width."""
    if isa != "generic" and not sys.platform.startswith("linux"):
        pytest.skip("the x86 variants are built on Linux/x86 only")
    marked = {}  # (file name, line) -> the loop's name
    for name in ("kernel.inc", "mean_tree.h"):
        lines = (CSRC / "cpu" / name).read_text().splitlines()
        marked.update({(name, i + 1): MARKED.search(line).group(1) for i, line in enumerate(lines)
                       if MARKED.search(line)})
    assert sorted(marked.values()) == ["centred_affine", "centred_classes", "load_run", "pairwise_tree",
                                       "replica_noise", "row_mean", "write_run"]
    result = subprocess.run(["g++", "-std=c++17", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-c",
                             str(CSRC / "cpu" / f"kernel_{isa}.cpp"), "-o", str(tmp_path / "k.o"),
                             "-fopt-info-vec-optimized"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    def vectorized(where):
        name, line = where
        return re.findall(rf"{re.escape(name)}:{line}:\d+: optimized: loop vectorized using (\d+) byte",
                          result.stderr)
    counts = {where: len(vectorized(where)) for where in marked}
    assert all(counts[where] >= 1 for where in marked), {marked[where]: counts[where] for where in marked}
    element_loop = next(where for where, name in marked.items() if name == "write_run")
    widths = vectorized(element_loop)
    # baseline x86-64 (SSE2) has no per-lane variable shift: its fp16 rounding stays scalar
    widest, expected = {"generic": ("16", 24 - 2), "avx2": ("32", 32 - 2), "avx512": ("64", 32 - 2)}[isa]
    assert sum(width == widest for width in widths) >= expected, widths


NVCC = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                if os.environ.get("CUDA_HOME") else None)
needs_nvcc = pytest.mark.skipif(NVCC is None or not os.path.exists(NVCC), reason="no nvcc on this machine")
NVCC_FLAGS = ["-arch=sm_90", "--fmad=false", "-O3", "-std=c++17"]


@needs_nvcc
def test_the_cuda_kernel_compiles_for_sm_90_without_spills(tmp_path):
    result = subprocess.run([NVCC, *NVCC_FLAGS, "-Xptxas", "-v", "-c", str(CSRC / "cuda" / "expand_segment.cu"),
                             "-o", str(tmp_path / "kernel.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.stdout + result.stderr
    kernels = re.findall(r"Compiling entry function '(\w+)' for 'sm_90'", report)
    assert len(kernels) == 4, report  # fp32, fp64, bf16, fp16
    registers = [int(n) for n in re.findall(r"Used (\d+) registers", report)]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    assert len(registers) == 4 and max(registers) <= 128 and spills and not any(spills), report


def harness_expected() -> list[str]:
    """The harness's fixed case (csrc/cuda/harness.cu), through the CPU emulation of the kernel."""
    source = torch.tensor([[((i * 7 + j * 3) % 11 - 5) * 0.25 for j in range(7)] for i in range(5)])
    out = torch.full((12, 19), -1.0)
    col_scale = torch.tensor([(k + 1) * 0.125 for k in range(19)])
    col_base = torch.tensor([6, 2, 9, 0, 3, 1, 5, 4])
    torch.ops.lemon.emulate_cuda_segment(source, torch.empty(0, dtype=torch.int64), col_base, None, col_scale,
                                         None, None, None, None, [0, 12, 5, 0, 0], [0, 19, 8, -1, 0], 1, 12345,
                                         19, 1e-6, 7e-7, out)
    return [f"{bits & 0xFFFFFFFF:08x}" for bits in out.view(torch.int32).flatten().tolist()]


@needs_nvcc
def test_the_cuda_kernel_through_its_host_harness(tmp_path):
    """Compiled and linked here; run, and compared with the emulation bit for bit, where a GPU is."""
    binary = tmp_path / "harness"
    result = subprocess.run([NVCC, *NVCC_FLAGS, str(CSRC / "cuda" / "harness.cu"),
                             str(CSRC / "cuda" / "expand_segment.cu"), "-o", str(binary)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = harness_expected()
    # 5 row classes (replica rows are equal) x 19 columns made distinct by the noise
    assert len(expected) == 12 * 19 and len(set(expected)) == 5 * 19
    if not torch.cuda.is_available():
        pytest.skip("compiled and linked; running it needs a GPU")
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == expected


# ---------------------------------------------------------------- the CPU executor's threads

def test_cpp_gives_the_same_bits_on_any_thread_count_and_from_concurrent_callers():
    """The block pool (csrc/cpu/block_pool.cpp) follows torch.set_num_threads, and callers on
    several Python threads share it: every result is the reference's."""
    from concurrent.futures import ThreadPoolExecutor

    from lemon import reference

    circ = maps.circular(300, 128)
    plan = TensorPlan(name="p", source="p", source_shape=(128, 96), shape=(300, 200), split=1,
                      axes=(Axis(circ), Axis(maps.circular(200, 96), maps.split_scale(maps.circular(200, 96)))),
                      noise_axis=1, noise_std=0.02, noise_key=tensor_key(0, "p"))
    source = torch.randn(128, 96, generator=torch.Generator().manual_seed(3))
    want = reference.execute(plan, source)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            assert torch.equal(native.execute_cpu(plan, source), want), count
    finally:
        torch.set_num_threads(threads)
    with ThreadPoolExecutor(4) as callers:
        results = list(callers.map(lambda _: native.execute_cpu(plan, source), range(16)))
    assert all(torch.equal(result, want) for result in results)


@needs_nvcc
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
def test_the_cuda_operator_glue_compiles_against_this_torch(tmp_path):
    """csrc/cuda/ops_cuda.cpp is built only where torch has CUDA; here it is at least compiled
    (-fsyntax-only) against this torch's headers and the CUDA toolkit's. A CPU wheel lacks one
    generated CUDA config header, which an empty stand-in replaces."""
    from torch.utils import cpp_extension
    import sysconfig

    stub = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("#pragma once\n")
    # the toolkit's headers: beside the real nvcc (which `nvcc -v` names), or CUDA_HOME
    toolkit = re.search(r"#\$ TOP=(\S+)", subprocess.run([NVCC, "-v", "--version"], capture_output=True,
                                                       text=True).stderr)
    cuda_include = Path(toolkit.group(1) if toolkit else os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [
        f"-I{cuda_include}", f"-I{tmp_path}", f"-I{sysconfig.get_paths()['include']}"]
    result = subprocess.run(["g++", "-std=c++17", "-fsyntax-only", "-DLEMON_WITH_CUDA", *includes,
                             str(CSRC / "cuda" / "ops_cuda.cpp")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
