"""The host side of every fused executor (Triton, C++, CUDA): a plan's window as segment pairs.

Each axis of the window is cut into at most a few *segments* that repeat a base pattern of
extended indices with a period (a circular map is one segment of period D_S; a V_zero / V_avg
stream adds a constant tail; a fused q/k/v axis is three), or, failing that, one segment that
is its own period. A pair of segments, one per axis, is a block of the output: its base tile
holds every distinct value and each base element is written to all its replicas (see
``csrc/segment.h`` and :mod:`lemon_kernels.kernel`). Along the noise axis a segment is *closed*
when every replica group lies in it with each member's next replica one period on (the last
one's: the first); otherwise the executor reads the next replica from a table.

Only index vectors of the axes' lengths are made here (and the MEAN side inputs): nothing of
the output's size. The executors turn :func:`fused_work` into their launches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import fresh_outputs
from .noise import scales
from .plan import TensorPlan
from .reference import compute_dtype
from .serial import one_thread

MIN_PERIOD = 16  # shorter repeats are not worth a replica loop: the tile would be mostly empty
MAX_SEGMENTS = 8  # an axis that cuts into more is taken whole, as one period
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Segment:
    """Window positions [start, start + length) whose extended indices repeat ``base`` (of length
    ``period``, on the CPU); ``first`` is set when ``base`` is first, first + 1, ... (no index loads)."""

    start: int
    length: int
    period: int
    base: torch.Tensor
    first: int | None
    special: bool  # some base index is MEAN, ONE or ZERO

    @property
    def replicas(self) -> int:
        return -(-self.length // self.period)


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
        out.append(Segment(start, length, period, base, first if affine else None, bool((base >= n_source).any())))
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
class SegmentPair:
    """One block of the output: a row segment, a column segment, whether the noise axis's
    segment is closed (else: the next-replica table), whether the base tile holds MEAN/ONE/ZERO."""

    row: Segment
    col: Segment
    closed: bool
    specials: bool


@dataclass(frozen=True)
class SideInputs:
    """What every segment pair of a plan's window reads besides its own segments, on the
    source's device, in the compute dtype (fp32; fp64 for fp64 sources)."""

    source_view: torch.Tensor  # [n_rows, n_cols], rows contiguous
    row_means: torch.Tensor | None  # per source row, its mean (MEAN columns)
    col_means: torch.Tensor | None  # per source column, its mean (MEAN rows)
    total_mean: torch.Tensor | None  # [1]: MEAN row and column
    row_scale: torch.Tensor | None  # per window row
    col_scale: torch.Tensor | None  # per window column
    origin: tuple[int, int]  # the window's first global row and column
    noise_axis: int  # -1: no noise
    next_table: torch.Tensor | None  # per noise-axis window position, the global next replica (int64)
    n_noise: int  # the noise axis's whole length: the class stride of the counter
    wide: bool  # some counter reaches 2^32
    key: int  # the tensor's 32-bit noise key, unsigned
    free_scale: float  # fp64; executors round each once to the compute dtype
    replica_scale: float


def check_out(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """The output block of the plan's window: ``out`` checked, or a new tensor (the stored shape
    when the window is the whole tensor)."""
    plan.check_source(source)
    if source.dtype not in DTYPES:
        raise TypeError(f"{plan.name}: lemon's fused executors handle fp32, fp64, bf16 and fp16, not {source.dtype}")
    (r0, r1), (c0, c1) = plan.block
    if out is None:
        return fresh_outputs.empty(plan.output_shape, source.dtype, source.device)
    if (out.dtype != source.dtype or out.numel() != (r1 - r0) * (c1 - c0) or not out.is_contiguous()
            or out.device != source.device):
        raise ValueError(f"{plan.name}: out must be a contiguous {source.dtype} tensor of "
                         f"{(r1 - r0) * (c1 - c0)} elements on {source.device}, got {out.dtype} "
                         f"{tuple(out.shape)} on {out.device}")
    return out


def fused_work(plan: TensorPlan, source: torch.Tensor, mean=None,
               row_means_in_pass: bool = False) -> tuple[SideInputs, tuple[SegmentPair, ...]]:
    """The side inputs and the segment pairs that together fill the plan's window. Needs no
    output (and the source's values only for MEAN side inputs): meta tensors work. ``mean``:
    an implementation of :func:`lemon.plan.mean_along` with its bits (the C++ one, on all
    threads: the means read the whole source; the rest is bookkeeping, on one thread).
    ``row_means_in_pass``: see :meth:`TensorPlan.means`."""
    source_view = source.reshape(plan.source_view_shape)
    if source_view.numel() and source_view.stride(-1) != 1:
        source_view = source_view.contiguous()
    return _cut(plan, source_view, plan.means(source_view, mean, row_means_in_pass))


@dataclass(frozen=True)
class _Layout:
    """What a window's segment pairs depend on besides the source's values and the tensor's
    noise key: the axes, the window, the noise axis, the device and the compute dtype. The rules
    give every layer the same axis objects, so this is worked out once per expansion and role,
    not per tensor."""

    row_scale: torch.Tensor | None
    col_scale: torch.Tensor | None
    next_table: torch.Tensor | None
    n_noise: int
    wide: bool
    pairs: tuple[SegmentPair, ...]  # shared by every tensor of this layout: immutable


@one_thread()  # bookkeeping on small tensors: see lemon/serial.py
def _cut(plan: TensorPlan, source_view: torch.Tensor, means) -> tuple[SideInputs, tuple[SegmentPair, ...]]:
    device, dtype = source_view.device, compute_dtype(source_view.dtype)
    row_means, col_means, total = (None if m is None else m.to(device=device, dtype=dtype).reshape(-1)
                                   for m in means)
    noise_axis = plan.noise_axis if plan.has_noise else -1
    where = tuple((n_source, lo, hi) for n_source, (lo, hi) in zip(plan.source_view_shape, plan.block))
    # keyed on the row axis, holding the column axis itself: an Axis hashes by identity
    layout = plan.axes[0].derived(("layout", plan.axes[1], where, noise_axis, device, dtype),
                                  lambda: _layout(plan, where, noise_axis, device, dtype))
    free_scale, replica_scale = scales(plan.noise_std) if noise_axis >= 0 else (0.0, 0.0)
    side = SideInputs(source_view, row_means, col_means, total, layout.row_scale, layout.col_scale,
                      (plan.block[0][0], plan.block[1][0]), noise_axis, layout.next_table, layout.n_noise,
                      layout.wide, plan.noise_key if noise_axis >= 0 else 0, free_scale, replica_scale)
    return side, layout.pairs


def _layout(plan: TensorPlan, where, noise_axis: int, device, dtype) -> _Layout:
    maps = plan.window_maps(device, dtype)
    ext = [ext_index for ext_index, _ in maps]  # stays on the CPU: segments are cut on the host
    # what depends on one axis (its window and source length) alone is shared between the
    # layouts of all tensors that use the axis (Axis.derived): its cut, and along the noise axis
    # which segments are closed and the next-replica table
    cut = tuple(axis.derived(("segments", *at), lambda: segments(e, at[0]))
                for axis, e, at in zip(plan.axes, ext, where))
    next_table, n_noise, wide = None, 1, False
    closed_along: dict[int, bool] = {}  # per noise-axis segment start
    if noise_axis >= 0:
        axis = plan.axes[noise_axis]
        n_source, lo, hi = where[noise_axis]
        next_window = axis.next_replica[lo:hi]
        n_noise = len(axis)
        other_ext = ext[1 - noise_axis]
        classes = int(other_ext.max()) + 1 if other_ext.numel() else 1
        wide = classes * n_noise >= 2**32
        sourced = ext[noise_axis] < n_source
        closed_along = axis.derived(("closed", n_source, lo, hi), lambda: {
            s.start: _closed(s, next_window, lo, sourced) for s in cut[noise_axis]})
        if not all(closed_along.values()):
            next_table = axis.derived(("next_table", lo, hi, device), lambda: next_window.to(device))
    pairs = []
    for seg_r in cut[0]:
        for seg_c in cut[1]:
            closed = closed_along[(seg_r, seg_c)[noise_axis].start] if noise_axis >= 0 else True
            pairs.append(SegmentPair(seg_r, seg_c, closed, seg_r.special or seg_c.special))
    return _Layout(maps[0][1], maps[1][1], next_table, n_noise, wide, tuple(pairs))
