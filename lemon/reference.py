"""The reference executor: a plan carried out with plain PyTorch indexing.

It is the oracle every other executor is tested against, and the CPU fallback. It writes
each output element once, keeps its temporaries bounded (about ``CHUNK_ELEMENTS`` elements
each) whatever the tensor size, and works in few, large operations: every torch operation is
a parallel region that waits for its slowest thread, so on a machine where another process
holds a core thousands of small ones cost far more than their arithmetic.

Noise depends on the axis that is not summed only through its class (see :mod:`lemon.plan`),
so the executor walks that axis in class order and draws each chunk's noise once per class:
replicas share one draw, and a k-times wider axis costs no more hashing. Along the noise axis
a replica needs one other integer (its next replica's), whatever the size of its group. Noise
is drawn in the output's layout, so it is added without a transpose.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from .noise import centred, centred_at, scales
from .plan import ZERO, TensorPlan
from .serial import one_thread

CHUNK_ELEMENTS = 1 << 20  # 4 MiB per fp32/int32 temporary: cache-sized, and many chunks to share out


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _extended_source(plan: TensorPlan, source_view: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """S~: the source view with a MEAN, a ONE and a ZERO row and column appended, so that
    every extended index is a plain gather. Means the plan does not use stay NaN."""
    rows, cols = source_view.shape
    ext = torch.empty(rows + 3, cols + 3, dtype=dtype, device=source_view.device)
    ext[:rows, :cols] = source_view
    ext[rows, :] = ext[:, cols] = float("nan")
    row_means, col_means, total = plan.means(source_view)
    if row_means is not None:
        ext[:rows, cols] = row_means
    if col_means is not None:
        ext[rows, :cols] = col_means
    if total is not None:
        ext[rows, cols] = total
    ext[rows + 1, :] = 1
    ext[:, cols + 1] = 1
    ext[rows + 2, :] = 0  # ZERO wins over ONE and MEAN
    ext[:, cols + 2] = 0
    return ext


# Gathers and scatters of a 2-D tensor along either dim. Along dim 1 torch.gather/scatter_
# (row by row) run 2-3x faster than index_select/index_copy_ (column by column).
def _take(x: torch.Tensor, dim: int, index: torch.Tensor | None) -> torch.Tensor:
    if index is None:
        return x
    return x.index_select(0, index) if dim == 0 else torch.gather(x, 1, index.expand(x.shape[0], -1))


def _put(x: torch.Tensor, dim: int, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    if dim == 0 or (x.element_size() == 2 and x.device.type == "cpu"):
        # fp16/bf16 on the CPU: torch's scatter_ costs as much as the whole tensor, not the
        # elements written (20 columns of a 1000 x 20000 fp16 tensor: 43 ms, fp32 0.25 ms), and
        # chunks scattered by two threads into one output lost each other's writes (zeros where
        # values were); index_copy_ writes just the indexed columns, as fast as fp32's scatter_
        return x.index_copy_(dim, index, values)
    return x.scatter_(1, index.expand(x.shape[0], -1), values)


class _NoiseAxis:
    """What the noise axis contributes to every chunk, worked out once per window:
    which counters to draw, and where each output index finds its own and its next
    replica's integer among them."""

    def __init__(self, plan: TensorPlan, device: torch.device, dtype: torch.dtype):
        self.axis = axis = plan.noise_axis
        lo, hi = plan.block[axis]
        plan_axis = plan.axes[axis]
        t = torch.arange(lo, hi)
        source, following = plan_axis.source[lo:hi], plan_axis.next_replica[lo:hi]
        free = source == ZERO
        paired = (source >= 0) & (following != t)  # a group of one gets c - c = 0
        counters = torch.unique(torch.cat([t[free | paired], following[paired]]))  # sorted
        self.n_axis = len(plan_axis)
        self.width = hi - lo
        self.counters = counters.to(device)
        self.counters32 = counters.to(device=device, dtype=torch.int32)
        self.key = plan.noise_key

        def position(u: torch.Tensor) -> torch.Tensor:  # where counter u sits among the drawn ones
            return torch.searchsorted(counters, u).to(device)

        everything_paired = bool(paired.all()) and counters.numel() == self.width
        self.paired = None if everything_paired else torch.nonzero(paired).flatten().to(device)
        self.paired_self = None if everything_paired else position(t[paired])
        self.paired_next = position(following[paired])
        self.free = torch.nonzero(free).flatten().to(device)
        self.free_self = position(t[free])
        free_scale, replica_scale = scales(plan.noise_std)
        self.free_scale = torch.tensor(free_scale, dtype=dtype, device=device)  # rounded once
        self.replica_scale = torch.tensor(replica_scale, dtype=dtype, device=device)
        self.dtype = dtype

    def draw(self, classes: torch.Tensor) -> torch.Tensor:
        """Noise for the given other-axis classes over the window, in output layout:
        ``[classes, window]`` for noise on axis 1, ``[window, classes]`` for axis 0."""
        a = self.axis
        c = self._centred(classes)
        replica = torch.sub(_take(c, a, self.paired_self), _take(c, a, self.paired_next))
        replica = replica.to(self.dtype).mul_(self.replica_scale)
        if self.paired is None:  # every index of the window has a next replica: nothing else to fill
            return replica
        shape = (classes.numel(), self.width) if a == 1 else (self.width, classes.numel())
        noise = torch.zeros(shape, dtype=self.dtype, device=classes.device)
        _put(noise, a, self.paired, replica)
        if self.free.numel():
            free = _take(c, a, self.free_self).to(self.dtype).mul_(self.free_scale)
            _put(noise, a, self.free, free)
        return noise

    def _centred(self, classes: torch.Tensor) -> torch.Tensor:
        """The centred integers at counter class * n_axis + t, in output layout."""
        a, n = self.axis, self.n_axis
        first = classes * n
        shape = (-1, 1) if a == 1 else (1, -1)
        along = (1, -1) if a == 1 else (-1, 1)
        if int(classes.max() + 1) * n < 2**31:  # the usual case: the counter fits int32 arithmetic
            low = first.to(torch.int32).view(shape) + self.counters32.view(along)
            return centred(self.key, low)
        return centred_at(self.key, first.view(shape) + self.counters.view(along))


def _single_threaded() -> None:
    torch.set_num_threads(1)  # this worker's operations run inline, with no OpenMP team


def _for_each(fill, starts: range, workers: int) -> None:
    """Run independent chunks on ``workers`` threads, each chunk's operations single-threaded."""
    if workers <= 1 or len(starts) <= 1:
        for start in starts:
            fill(start)
        return
    with ThreadPoolExecutor(min(workers, len(starts)), initializer=_single_threaded) as pool:
        for _ in pool.map(fill, starts):  # in order; re-raises a chunk's error here
            pass


def execute(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Fill ``out`` (allocated if None: the plan's window, in the source's dtype and view layout
    reshaped to the stored shape when the window is the whole tensor) from ``source``.

    On the CPU it parallelizes by chunk, not by operation: the calling thread runs single-threaded
    and the chunks go to as many worker threads as torch had intra-op threads. An OpenMP team per
    operation waits at every barrier for its slowest thread, so with another process on one core
    each of thousands of operations would cost a scheduler time slice; independent chunks just
    proceed. The thread count is restored on return."""
    if source.device.type != "cpu":
        return _execute(plan, source, out, workers=1)
    with one_thread() as threads:
        return _execute(plan, source, out, workers=threads)


def _execute(plan: TensorPlan, source: torch.Tensor, out: torch.Tensor | None, workers: int) -> torch.Tensor:
    plan.check_source(source)
    (r0, r1), (c0, c1) = plan.block
    dtype, device = compute_dtype(source.dtype), source.device
    if out is None:
        out = torch.empty(plan.output_shape, dtype=source.dtype, device=device)
    out_view = out.view(r1 - r0, c1 - c0)
    ext = _extended_source(plan, source.reshape(plan.source_view_shape), dtype)
    maps = plan.window_maps(device, dtype)
    index = [ext_index.to(device) for ext_index, _ in maps]
    scale = [axis_scale for _, axis_scale in maps]

    # walk the axis that carries no noise (rows without noise); chunks span the other whole
    walk = 0 if plan.noise_axis in (None, 1) else 1
    across = 1 - walk
    noise = _NoiseAxis(plan, device, dtype) if plan.has_noise else None
    if noise is None:
        positions, classes = torch.arange(index[walk].numel(), device=device), None
    else:  # class order: replicas land in one chunk and share one draw
        classes, positions = torch.sort(index[walk], stable=True)
    step = max(1, CHUNK_ELEMENTS // max(1, out_view.shape[across]))

    def fill(start: int) -> None:  # one chunk of whole lines along the walked axis
        at = positions[start:start + step]
        block = _take(_take(ext, walk, index[walk][at]), across, index[across])
        for axis in (0, 1):
            if scale[axis] is not None:
                factor = scale[axis][at] if axis == walk else scale[axis]
                block *= factor[:, None] if axis == 0 else factor[None, :]
        if noise is not None:
            uniq, inverse = torch.unique_consecutive(classes[start:start + step], return_inverse=True)
            drawn = noise.draw(uniq)
            if int(uniq[-1]) == plan.source_view_shape[walk] + 2:  # ZERO's class: no noise, stays 0
                drawn.narrow(walk, uniq.numel() - 1, 1).zero_()
            block += drawn if uniq.numel() == at.numel() else _take(drawn, walk, inverse)
        first = int(at[0])
        if int(at[-1]) - first + 1 == at.numel() and bool((at[1:] > at[:-1]).all()):
            out_view.narrow(walk, first, at.numel()).copy_(block)  # a contiguous run
        else:
            _put(out_view, walk, at, block.to(out.dtype))

    _for_each(fill, range(0, positions.numel(), step), workers)
    return out
