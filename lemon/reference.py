"""The reference executor: a plan carried out with plain PyTorch indexing.

It is the oracle every other executor is tested against, and the CPU fallback.
It works through the plan's window in chunks along the axis that carries no
noise, so its temporaries stay bounded (~``CHUNK_ELEMENTS`` elements) whatever
the tensor size, and it writes each output element once.
"""
from __future__ import annotations

import torch

from .noise import standard_noise
from .plan import MEAN, ONE, ZERO, TensorPlan

CHUNK_ELEMENTS = 1 << 21  # int64 temporaries of 16 MiB: small enough for glibc to reuse


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _extended_source(source_view: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The source view with a MEAN, a ONE and a ZERO row and column appended, so that
    every plan index (special or not) is a plain gather."""
    rows, cols = source_view.shape
    ext = torch.empty(rows + 3, cols + 3, dtype=dtype, device=source_view.device)
    ext[:rows, :cols] = source_view
    ext[:rows, cols] = ext[:rows, :cols].mean(1)
    ext[rows, : cols + 1] = ext[:rows, : cols + 1].mean(0)
    ext[rows + 1, :] = 1
    ext[:, cols + 1] = 1
    ext[rows + 2, :] = 0  # ZERO wins over ONE and MEAN
    ext[:, cols + 2] = 0
    return ext


def _gather_index(source: torch.Tensor, n_source: int) -> torch.Tensor:
    index = source.clone()
    index[source == MEAN] = n_source
    index[source == ONE] = n_source + 1
    index[source == ZERO] = n_source + 2
    return index


def _noise(plan: TensorPlan, rows: torch.Tensor, cols: torch.Tensor, dtype) -> torch.Tensor:
    """Noise for the output view elements rows x cols (global indices), in view layout.
    Works in [noise-axis index, other index] layout, so every gather is of whole rows."""
    axis = plan.noise_axis
    device = rows.device
    n_cols = plan.view_shape[1]
    along, other = (rows, cols) if axis == 0 else (cols, rows)
    group_of, members = (t.to(device) for t in plan.axes[axis].replica_groups)

    # Draw R only where it can be non-zero: free indices and groups of two or more anywhere on
    # the noise axis (a group may reach outside the window). A group of one gets R - R = 0.
    group_size = (members >= 0).sum(1)
    needs_draw = group_of < 0
    needs_draw[~needs_draw] = group_size[group_of[~needs_draw]] > 1
    drawn = torch.nonzero(needs_draw).flatten()
    slot = torch.full_like(group_of, -1)
    slot[drawn] = torch.arange(drawn.numel(), device=device)
    linear = drawn[:, None] * n_cols + other[None, :] if axis == 0 else other[None, :] * n_cols + drawn[:, None]
    r = standard_noise(plan.noise_key, linear).to(dtype).mul_(plan.noise_std)  # [drawn, other]

    value = torch.zeros(along.numel(), other.numel(), dtype=dtype, device=device)
    hit = torch.nonzero(slot[along] >= 0).flatten()
    value.index_copy_(0, hit, r.index_select(0, slot[along[hit]]))
    grouped = hit[group_of[along[hit]] >= 0]
    if grouped.numel():
        # zero-sum: subtract the group mean, accumulated in ascending member order
        group_members = members[group_of[along[grouped]]]  # [n, M], -1 padded
        present = group_members >= 0
        member_slot = slot[group_members.clamp(min=0)]
        total = torch.zeros(grouped.numel(), other.numel(), dtype=dtype, device=device)
        for m in range(group_members.shape[1]):
            total += r.index_select(0, member_slot[:, m]).mul_(present[:, m, None])
        value.index_add_(0, grouped, total.div_(present.sum(1, keepdim=True)).neg_())
    value[:, plan.axes[1 - axis].source.to(device)[other] == ZERO] = 0
    return value.T if axis == 1 else value


def execute(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Fill ``out`` (allocated if None: the plan's window, in the source's dtype and view layout
    reshaped to the stored shape when the window is the whole tensor) from ``source``."""
    if tuple(source.shape) != tuple(plan.source_shape):
        raise ValueError(f"{plan.name}: source {plan.source} has shape {tuple(source.shape)}, "
                         f"the plan expects {tuple(plan.source_shape)}")
    (r0, r1), (c0, c1) = plan.block
    whole = plan.window is None or plan.block == ((0, plan.view_shape[0]), (0, plan.view_shape[1]))
    dtype, device = compute_dtype(source.dtype), source.device
    if out is None:
        out = torch.empty(plan.shape if whole else (r1 - r0, c1 - c0), dtype=source.dtype, device=device)
    out_view = out.view(r1 - r0, c1 - c0)
    ext = _extended_source(source.reshape(plan.source_view_shape), dtype)
    n_rows, n_cols = plan.source_view_shape
    row_index = _gather_index(plan.axes[0].source[r0:r1], n_rows).to(device)
    col_index = _gather_index(plan.axes[1].source[c0:c1], n_cols).to(device)
    row_scale, col_scale = (None if a.scale is None else a.scale.to(device) for a in plan.axes)

    # chunk along the axis without noise: a chunk draws the noise axis whole, once
    chunk_axis = 0 if plan.noise_axis in (None, 1) else 1
    length = (r1 - r0, c1 - c0)
    width = len(plan.axes[1 - chunk_axis]) if plan.has_noise else length[1 - chunk_axis]  # noise: whole axis
    step = max(1, CHUNK_ELEMENTS // max(1, width))
    for start in range(0, length[chunk_axis], step):
        stop = min(start + step, length[chunk_axis])
        rs = slice(start, stop) if chunk_axis == 0 else slice(None)
        cs = slice(start, stop) if chunk_axis == 1 else slice(None)
        block = ext.index_select(0, row_index[rs]).index_select(1, col_index[cs])
        if row_scale is not None:
            block *= row_scale[r0:r1][rs].to(dtype)[:, None]
        if col_scale is not None:
            block *= col_scale[c0:c1][cs].to(dtype)[None, :]
        if plan.has_noise:
            rows = torch.arange(r0, r1, device=device)[rs]
            cols = torch.arange(c0, c1, device=device)[cs]
            block += _noise(plan, rows, cols, dtype)
        out_view[rs, cs] = block
    return out
