"""lemon's compiled executors: the C++ extension ``lemon._C`` (built from ``csrc/`` by setup.py).

Importing the extension registers two torch operators, with the same schema (the arguments of
one segment pair, see :mod:`lemon.segments` and ``csrc/segment.h``), writing ``out`` in place:

* ``torch.ops.lemon.expand_segment``: CPU tensors (vectorized loops, torch's intra-op threads)
  and, in builds with CUDA, CUDA tensors (the CUDA kernel, on the current stream);
* ``torch.ops.lemon.emulate_cuda_segment``: the CUDA kernel's per-thread code run on the CPU,
  so that machines without a GPU test the CUDA algorithm's bits.

Their fake (meta) implementations are registered here. :func:`execute_cpu` and
:func:`execute_cuda` have the contract of :func:`lemon.reference.execute` and its bits.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

from .plan import TensorPlan
from .segments import check_out, fused_work

BUILD_HINT = ("build it with `pip install --no-build-isolation -v -e .` in lemon's checkout (a C++17 compiler "
              "and the installed torch's headers are needed; for the CUDA executor, torch with CUDA and a "
              "CUDA toolkit), without LEMON_NO_EXT=1 set")
OPERATORS = ("expand_segment", "emulate_cuda_segment")  # mutating, no outputs


@functools.lru_cache(maxsize=None)
def extension():
    """The loaded ``lemon._C`` module, or the reason it is not there (a string)."""
    if os.environ.get("LEMON_NO_EXT") == "1":
        return "LEMON_NO_EXT=1 turns the C++ extension off"
    try:
        module = importlib.import_module("lemon._C")
    except ImportError as error:  # not built, or built against another torch (an undefined symbol)
        return f"lemon._C cannot be imported ({error})"
    for name in OPERATORS:  # mutating ops with no outputs: the fake implementation does nothing
        torch.library.register_fake(f"lemon::{name}")(_no_output)
    torch.library.register_fake("lemon::mean_along")(_fake_mean)
    return module


def _fake_mean(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.new_empty(x.shape[1 - dim], dtype=torch.float64)


def _no_output(*args, **kwargs) -> None:
    return None


def built() -> bool:
    return not isinstance(extension(), str)


def build_info() -> dict:
    """What the extension holds ({} without it): the instruction set its CPU loops use
    (``cpu_isa``), those this CPU runs (``cpu_isas``), whether it has the CUDA executor (``cuda``)."""
    return dict(extension().build_info()) if built() else {}


def has_cuda_executor() -> bool:
    return bool(build_info().get("cuda"))


def require(what: str) -> None:
    """Raise, saying how to build it, if the extension (with CUDA, for ``what="cuda"``) is missing."""
    if not built():
        raise RuntimeError(f"lemon: backend {what!r} needs lemon's C++ extension, which is not available: "
                           f"{extension()}. To use it, {BUILD_HINT}; backend='reference' works without it.")
    if what == "cuda" and not has_cuda_executor():
        raise RuntimeError("lemon: backend 'cuda' is not in this build of lemon's extension (it was built where "
                           f"torch had no CUDA or no CUDA toolkit was found); {BUILD_HINT}")


def segment_calls(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor,
                  row_means_in_pass: bool = False) -> list[tuple]:
    """The operator's arguments, one tuple per segment pair, that fill ``out`` (the plan's window,
    checked by :func:`lemon.segments.check_out`) from ``source``. ``row_means_in_pass``:
    MEAN columns without their side input, which the CPU executor takes in its pass."""
    if out.numel() == 0:
        return []
    side, pairs = fused_work(plan, source, mean_along if source.device.type == "cpu" else None,
                             row_means_in_pass)
    (r0, r1), (c0, c1) = plan.block
    block = out.view(r1 - r0, c1 - c0)
    device = source.device
    no_base = torch.empty(0, dtype=torch.int64, device=device)
    calls = []
    for pair in pairs:
        bases, ranges = [], []
        for seg, origin in zip((pair.row, pair.col), side.origin):
            bases.append(no_base if seg.first is not None else seg.base.to(device))
            ranges.append([seg.start, seg.length, seg.period, -1 if seg.first is None else seg.first, origin])
        calls.append((side.source_view, bases[0], bases[1], side.row_scale, side.col_scale, side.row_means,
                      side.col_means, side.total_mean, None if pair.closed else side.next_table, ranges[0],
                      ranges[1], side.noise_axis, side.key, side.n_noise, side.free_scale, side.replica_scale,
                      block))
    return calls


def mean_along(x: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`lemon.plan.mean_along` in C++ (CPU tensors), same bits, on torch's threads."""
    return torch.ops.lemon.mean_along(x, dim)


def run_plan(op, plan: TensorPlan, source: torch.Tensor, out: torch.Tensor | None,
             row_means_in_pass: bool = False) -> torch.Tensor:
    """Fill the plan's window with ``op``, one call per segment pair."""
    out = check_out(plan, source, out)
    for args in segment_calls(plan, source, out, row_means_in_pass):
        op(*args)  # on torch's thread count (the bookkeeping before it ran on one: lemon/serial.py)
    return out


def execute_cpu(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The C++ CPU executor (``backend="cpp"``): CPU tensors."""
    require("cpp")
    # the row means of MEAN columns: taken in the executor's pass over each row, not in one before
    return run_plan(torch.ops.lemon.expand_segment, plan, source, out, row_means_in_pass=True)


def execute_cuda(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The CUDA executor (``backend="cuda"``): CUDA tensors, in builds with CUDA."""
    require("cuda")
    return run_plan(torch.ops.lemon.expand_segment, plan, source, out)


def emulate_cuda(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The CUDA kernel's algorithm run on the CPU, thread by thread (tests on machines without a GPU)."""
    require("cuda emulation")
    return run_plan(torch.ops.lemon.emulate_cuda_segment, plan, source, out)
