"""Carry out a :class:`~lemon.plan.TensorPlan` with the Triton kernel: the same contract, and the
same bits, as :func:`lemon.reference.execute`.

The host side (:mod:`lemon.segments`, shared with the C++ and CUDA executors) cuts the plan's
window into segment pairs; this module launches :func:`~lemon_kernels.kernel.expand_segment`
once per pair, and a program writes every replica of its base tile. Nothing of the output's
size is allocated besides the output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from lemon.noise import signed32
from lemon.plan import TensorPlan
from lemon.reference import compute_dtype
from lemon.segments import check_out, fused_work

from .kernel import expand_segment

# a tile of base positions (the column axis is the contiguous one): 8 x 128 keeps bf16 at ~75
# registers and fp64 at ~120 with no spills on sm_90 (32 x 128 spilled in fp64); see the report
BLOCK_ROWS, BLOCK_COLS = 8, 128
NUM_WARPS = 4


@dataclass(frozen=True)
class Launch:
    """One launch of :func:`~lemon_kernels.kernel.expand_segment`: its grid, its arguments in
    order, and its compile-time constants (what :mod:`lemon_kernels.report` compiles)."""

    grid: tuple[int, int]
    args: tuple
    constexprs: dict


def execute(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Fill ``out`` (allocated if None: the plan's window, in the source's dtype, reshaped to the
    stored shape when the window is the whole tensor) from ``source`` with the Triton kernel."""
    out = check_out(plan, source, out)
    for launch in launches(plan, source, out):
        expand_segment[launch.grid](*launch.args, **launch.constexprs, num_warps=NUM_WARPS, enable_fp_fusion=False)
    return out


def launches(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor) -> list[Launch]:
    """The kernel launches that fill ``out`` from ``source``: one per segment pair. Needs no
    tensor data (meta tensors work), so the compile report can list what real plans launch."""
    (r0, r1), (c0, c1) = plan.block
    if out.numel() == 0:
        return []
    device, dtype = source.device, compute_dtype(source.dtype)
    side, pairs = fused_work(plan, source)
    n_rows, n_cols = plan.source_view_shape
    placeholder = out  # a pointer argument the kernel never reads (its HAS_* flag is off)
    means = [m if m is not None else torch.zeros(1, dtype=dtype, device=device)
             for m in (side.row_means, side.col_means, side.total_mean)]
    noise_scales = torch.tensor([side.free_scale, side.replica_scale], dtype=dtype, device=device)  # rounded once
    next_table = side.next_table if side.next_table is not None else torch.zeros(1, dtype=torch.int64, device=device)
    store = out.view(torch.int16) if out.dtype == torch.bfloat16 else out  # bf16 is stored as rounded bits
    out_kind = {torch.bfloat16: 1, torch.float16: 2}.get(out.dtype, 0)
    compute = {torch.float32: triton.language.float32, torch.float64: triton.language.float64}[dtype]
    result = []
    for pair in pairs:
        seg_r, seg_c = pair.row, pair.col
        block_r = min(BLOCK_ROWS, triton.next_power_of_2(min(seg_r.period, seg_r.length)))
        block_c = min(BLOCK_COLS, triton.next_power_of_2(min(seg_c.period, seg_c.length)))
        grid = (triton.cdiv(min(seg_r.period, seg_r.length), block_r),
                triton.cdiv(min(seg_c.period, seg_c.length), block_c))
        args = (store, side.source_view, seg_r.base.to(device), seg_c.base.to(device),
                side.row_scale if side.row_scale is not None else placeholder,
                side.col_scale if side.col_scale is not None else placeholder,
                means[0], means[1], means[2], noise_scales, next_table,
                n_rows, n_cols, side.source_view.stride(0), c1 - c0,
                seg_r.start, seg_r.length, seg_r.period, seg_r.replicas, seg_r.first or 0, r0,
                seg_c.start, seg_c.length, seg_c.period, seg_c.replicas, seg_c.first or 0, c0,
                signed32(side.key), side.n_noise)
        constexprs = dict(
            COMPUTE=compute, OUT_KIND=out_kind, NOISE_AXIS=side.noise_axis, NEXT_TABLE=not pair.closed,
            WIDE_COUNTERS=side.wide, ROW_AFFINE=seg_r.first is not None, COL_AFFINE=seg_c.first is not None,
            SPECIALS=pair.specials, HAS_ROW_SCALE=side.row_scale is not None,
            HAS_COL_SCALE=side.col_scale is not None, HAS_ROW_MEANS=side.row_means is not None,
            HAS_COL_MEANS=side.col_means is not None, BLOCK_R=block_r, BLOCK_C=block_c)
        result.append(Launch(grid, args, constexprs))
    return result
