"""Carry out a :class:`~lemon.plan.TensorPlan` with the Triton kernel: the same contract, and the
same bits, as :func:`lemon.reference.execute`.

The host side only cuts the plan's window into segments and launches: each axis is split into
at most a few *segments* that repeat a base pattern of extended indices with a period (a
circular map is one segment of period D_S; a V_zero / V_avg stream adds a constant tail; a
fused q/k/v axis is three), or, failing that, one segment that is its own period. One launch
per pair of segments; a program writes every replica of its base tile (see
:mod:`lemon_kernels.kernel`). Nothing of the output's size is allocated besides the output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from lemon.noise import scales, signed32
from lemon.plan import TensorPlan
from lemon.reference import compute_dtype

from .kernel import expand_segment

MIN_PERIOD = 16  # shorter repeats are not worth a replica loop: the tile would be mostly empty
MAX_SEGMENTS = 8  # an axis that cuts into more is taken whole, as one period
# a tile of base positions (the column axis is the contiguous one): 8 x 128 keeps bf16 at ~75
# registers and fp64 at ~120 with no spills on sm_90 (32 x 128 spilled in fp64); see the report
BLOCK_ROWS, BLOCK_COLS = 8, 128
NUM_WARPS = 4


@dataclass(frozen=True)
class Segment:
    """Window positions [start, start + length) whose extended indices repeat ``base`` (of length
    ``period``); ``first`` is set when ``base`` is first, first + 1, ... (no index loads)."""

    start: int
    length: int
    period: int
    base: torch.Tensor
    first: int | None


def segments(ext: torch.Tensor, n_source: int) -> list[Segment]:
    """Cut an axis's extended indices into periodic segments (see the module docstring)."""
    cuts: list[tuple[int, int, int]] = []
    position, n = 0, ext.numel()
    while position < n:
        rest = ext[position:]
        repeats = torch.nonzero(rest[1:] == rest[0]).flatten()
        period = int(repeats[0]) + 1 if repeats.numel() else 0
        if period >= MIN_PERIOD:
            breaks = torch.nonzero(rest[period:] != rest[:-period]).flatten()
            length = period + (int(breaks[0]) if breaks.numel() else rest.numel() - period)
            if length > period:
                cuts.append((position, length, period))
                position += length
                continue
        cuts.append((position, n - position, n - position))  # no repeat starts here: plain to the end
        break
    if len(cuts) > MAX_SEGMENTS:
        cuts = [(0, n, n)]
    out = []
    for start, length, period in cuts:
        base = ext[start:start + period]
        first = int(base[0])
        affine = first + period <= n_source and torch.equal(base, torch.arange(first, first + period))
        out.append(Segment(start, length, period, base, first if affine else None))
    return out


def _closed(segment: Segment, next_window: torch.Tensor, window_start: int, sourced: torch.Tensor) -> bool:
    """Whether every replica group on this stretch of the noise axis lies in the segment, each
    member's next replica one period on (the last one's: the first)."""
    index = torch.arange(segment.length)
    t = window_start + segment.start + index
    expected = torch.where(index + segment.period < segment.length, t + segment.period,
                           window_start + segment.start + index % segment.period)
    actual = next_window[segment.start:segment.start + segment.length]
    keep = sourced[segment.start:segment.start + segment.length]
    return bool(torch.equal(actual[keep], expected[keep]))


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
    out = _output(plan, source, out)
    for launch in launches(plan, source, out):
        expand_segment[launch.grid](*launch.args, **launch.constexprs, num_warps=NUM_WARPS, enable_fp_fusion=False)
    return out


def _output(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    plan.check_source(source)
    if source.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise TypeError(f"{plan.name}: the Triton executor handles fp32, fp64, bf16 and fp16, not {source.dtype}")
    (r0, r1), (c0, c1) = plan.block
    if out is None:
        return torch.empty(plan.output_shape, dtype=source.dtype, device=source.device)
    if out.dtype != source.dtype or out.numel() != (r1 - r0) * (c1 - c0) or not out.is_contiguous():
        raise ValueError(f"{plan.name}: out must be a contiguous {source.dtype} tensor of "
                         f"{(r1 - r0) * (c1 - c0)} elements, got {out.dtype} {tuple(out.shape)}")
    return out


def launches(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor) -> list[Launch]:
    """The kernel launches that fill ``out`` from ``source``: one per pair of segments. Needs no
    tensor data (meta tensors work), so the compile report can list what real plans launch."""
    (r0, r1), (c0, c1) = plan.block
    device, dtype = source.device, compute_dtype(source.dtype)
    if out.numel() == 0:
        return []
    source_view = source.reshape(plan.source_view_shape).contiguous()
    n_rows, n_cols = plan.source_view_shape

    row_means, col_means, total = plan.means(source_view)
    means = [m.to(dtype) if m is not None else torch.zeros(1, dtype=dtype, device=device)
             for m in (row_means, col_means, total)]
    maps = plan.window_maps(device, dtype)
    ext = [ext_index for ext_index, _ in maps]  # stays on the CPU: segments are cut on the host
    scale = [axis_scale for _, axis_scale in maps]

    noise_axis = plan.noise_axis if plan.has_noise else -1
    if noise_axis >= 0:
        lo, hi = plan.block[noise_axis]
        next_window = plan.axes[noise_axis].next_replica[lo:hi]
        sourced = ext[noise_axis] < plan.source_view_shape[noise_axis]
        next_table = next_window.to(device)
        n_noise = len(plan.axes[noise_axis])
        classes = int(ext[1 - noise_axis].max()) + 1
        wide = classes * n_noise >= 2**32
        noise_scales = torch.tensor(scales(plan.noise_std), dtype=dtype, device=device)  # each rounded once
        key = signed32(plan.noise_key)
    else:
        next_table = noise_scales = torch.zeros(1, dtype=torch.int64, device=device)
        n_noise, wide, key = 1, False, 0

    store = out.view(torch.int16) if out.dtype == torch.bfloat16 else out  # bf16 is stored as rounded bits
    out_kind = {torch.bfloat16: 1, torch.float16: 2}.get(out.dtype, 0)
    compute = {torch.float32: triton.language.float32, torch.float64: triton.language.float64}[dtype]
    placeholder = out  # a pointer argument the kernel never reads (its HAS_* flag is off)
    result = []
    for seg_r in segments(ext[0], n_rows):
        for seg_c in segments(ext[1], n_cols):
            closed = True
            if noise_axis >= 0:
                seg_a = (seg_r, seg_c)[noise_axis]
                closed = _closed(seg_a, next_window, plan.block[noise_axis][0], sourced)
            block_r = min(BLOCK_ROWS, triton.next_power_of_2(min(seg_r.period, seg_r.length)))
            block_c = min(BLOCK_COLS, triton.next_power_of_2(min(seg_c.period, seg_c.length)))
            grid = (triton.cdiv(min(seg_r.period, seg_r.length), block_r),
                    triton.cdiv(min(seg_c.period, seg_c.length), block_c))
            specials = bool((seg_r.base >= n_rows).any() or (seg_c.base >= n_cols).any())
            args = (store, source_view, seg_r.base.to(device), seg_c.base.to(device),
                    scale[0] if scale[0] is not None else placeholder,
                    scale[1] if scale[1] is not None else placeholder,
                    means[0], means[1], means[2], noise_scales, next_table,
                    n_rows, n_cols, source_view.stride(0), c1 - c0,
                    seg_r.start, seg_r.length, seg_r.period, triton.cdiv(seg_r.length, seg_r.period),
                    seg_r.first or 0, r0,
                    seg_c.start, seg_c.length, seg_c.period, triton.cdiv(seg_c.length, seg_c.period),
                    seg_c.first or 0, c0,
                    key, n_noise)
            constexprs = dict(
                COMPUTE=compute, OUT_KIND=out_kind, NOISE_AXIS=noise_axis, NEXT_TABLE=not closed,
                WIDE_COUNTERS=wide, ROW_AFFINE=seg_r.first is not None, COL_AFFINE=seg_c.first is not None,
                SPECIALS=specials, HAS_ROW_SCALE=scale[0] is not None, HAS_COL_SCALE=scale[1] is not None,
                BLOCK_R=block_r, BLOCK_C=block_c)
            result.append(Launch(grid, args, constexprs))
    return result
