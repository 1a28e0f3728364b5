"""The plan IR: for every output tensor, how each of its elements is made from a source tensor.

A tensor is seen through a 2-D *view*: its first ``split`` dimensions form axis 0,
the rest form axis 1 (a bias is ``(1, n)``, a conv kernel ``(out, in*kh*kw)``,
ViT's CLS token ``(1, hidden)``). Over that view, with S the source view::

    out[i, j] = S~[row[i], col[j]] * row_scale[i] * col_scale[j] + noise(i, j)

``row``/``col`` hold a source index per output index, or a special value:
``ZERO`` (the element is 0 and wins over everything), ``ONE`` (the element is 1,
e.g. an identity-affine norm), ``MEAN`` (the mean of S along that axis: LEMON's
average expansion). S~ is S *extended* by a mean, a ones and a zeros row and
column, so that every index is a plain gather: along an axis of source length n,
the *extended index* of a source index s is s, of MEAN n, of ONE n + 1, of ZERO n + 2.
The means are a side input that every executor takes from :meth:`TensorPlan.means`
rather than computing its own: fp64 means by a fixed pairwise tree of additions
(:func:`mean_along`), so they have the same bits on every device and thread count.

Noise lives on at most one axis, the *noise axis*: the axis that is summed when the
tensor is used (a fan-in weight's input axis, a fan-out weight's replicas). The
other axis is not summed: its indices with the same source are *replicas* that must
compute bit-identical values in the expanded model, or their fp32 round-off differs
and noisy weights amplify the difference layer after layer. So noise is a function
of the other axis's extended index (its *class*), never of its position:

    counter(i, j) = class * len(noise axis) + t      (t: the noise-axis index, class: the other's)
    c(i, j)       = centred integer of (key, counter)   (see :mod:`lemon.noise`)
    noise(i, j)   = c(i, j) * free                      t's source is ZERO: a free weight,
                                                        multiplying an input known to be 0
                  = (c(i, j) - c at next(t)) * replica  t's source is s >= 0

where ``next(t)`` is the next larger noise-axis index with the same source, wrapping to
the smallest: over a replica group the differences telescope to exactly 0 (integers), so
the replicas of a split weight still sum to the original, and a group of one gets 0.
``free`` and ``replica`` are :func:`lemon.noise.scales` of the plan's ``noise_std``.
Elements whose other-axis index is ZERO get no noise: they must stay 0.

Arithmetic is in fp32 (fp64 for fp64 sources), rounded once to the output dtype:
``((S~ * row_scale) * col_scale) + noise``, scales and means rounded from their fp64
values, the integer difference exact, ``free``/``replica`` rounded once from fp64. IEEE
arithmetic in this order gives every executor the same bits, signed zeros included.

A plan with an ``offset`` (a norm gain stored as w in a ``(1 + w)`` form, Gemma's) is carried
out on ``source + offset`` and stored minus the offset, in fp64, rounded once to the source's
dtype (:func:`execute`): the executors never see it, and the scales act on the gain itself.

A plan carries the *whole* tensor's maps plus a ``window`` of the view it
covers: :meth:`TensorPlan.restrict` gives the plan of a block, whose noise is
exactly the whole tensor's over that block. Executors only ever execute a plan;
they never look at models or rules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

ZERO, MEAN, ONE = -1, -2, -3
SIXTEEN_BITS = (torch.bfloat16, torch.float16)  # where rounding each value on its own can cost exactness
SPECIAL_NAMES = {ZERO: "zero", MEAN: "mean", ONE: "one"}


@dataclass(frozen=True, eq=False)
class Axis:
    """The source index (or ZERO/MEAN/ONE) and scale of every output index of one view axis."""

    source: torch.Tensor  # int64 [n]
    scale: torch.Tensor | None = None  # float64 [n] (exact enough for fp64 models); None: 1 everywhere
    _derived: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if self.scale is not None:
            if self.scale.shape != self.source.shape:
                raise ValueError("an axis needs one scale per output index")
            object.__setattr__(self, "scale", self.scale.to(torch.float64))

    def __len__(self) -> int:
        return self.source.numel()

    def derived(self, key, make):
        """``make()``, computed once per ``key`` for this axis. An axis is immutable and the rules
        give the plans of every layer the same axis objects, so what executors derive from an
        axis alone (extended indices, segment cuts) is worked out once per expansion, not once
        per tensor: on small models that bookkeeping cost more than the copying."""
        try:
            return self._derived[key]
        except KeyError:
            value = self._derived[key] = make()
            return value

    def extended(self, n_source: int) -> torch.Tensor:
        """Extended indices into S~ (see the module docstring): the gather index, and the noise class."""
        return self.derived(("extended", n_source), lambda: extended_index(self.source, n_source))

    @cached_property
    def has_mean(self) -> bool:
        return bool((self.source == MEAN).any())

    @cached_property
    def has_mean_or_one(self) -> bool:
        return bool((self.source < ZERO).any())

    @cached_property
    def next_replica(self) -> torch.Tensor:
        """Per output index, the next larger index with the same source, wrapping to the smallest
        of the group (itself for a group of one); -1 where the source is special."""
        nxt = torch.full_like(self.source, -1)
        sourced = torch.nonzero(self.source >= 0).flatten()
        if sourced.numel() == 0:
            return nxt
        order = torch.sort(self.source[sourced], stable=True)  # groups together, members ascending
        members, groups = sourced[order.indices], order.values
        starts = torch.ones_like(groups, dtype=torch.bool)
        starts[1:] = groups[1:] != groups[:-1]
        first = members[starts][torch.cumsum(starts, 0) - 1]  # the first member of each one's group
        last = torch.ones_like(starts)
        last[:-1] = starts[1:]
        following = torch.roll(members, -1)
        nxt[members] = torch.where(last, first, following)
        return nxt

    def is_new(self) -> torch.Tensor:
        """True for output indices that are not the first copy of a source index."""
        new = self.source < 0
        sourced = torch.nonzero(~new).flatten()
        if sourced.numel():
            _, first = _first_occurrence(self.source[sourced])
            seen_before = torch.ones(sourced.numel(), dtype=torch.bool)
            seen_before[first] = False
            new[sourced] = seen_before
        return new


def mean_along(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The fp64 mean of a 2-D ``x`` along ``dim``, summed by a fixed pairwise tree of elementwise
    additions (line i plus line i + half, a last odd line carried up): elementwise IEEE
    additions in a fixed order give the same bits on every device and thread count, where a
    library reduction's order depends on both. Works in blocks of ~2^20 elements, cut across
    the other axis (whole rows of a row-major ``x`` when ``dim`` is 1: no strided copies)."""
    n, width = x.shape[dim], x.shape[1 - dim]
    out = torch.empty(width, dtype=torch.float64, device=x.device)
    step = max(1, (1 << 20) // max(n, 1))
    for start in range(0, width, step):
        part = x.narrow(1 - dim, start, min(step, width - start)).to(torch.float64)
        while part.shape[dim] > 1:
            half = part.shape[dim] // 2
            pairs = part.narrow(dim, 0, half) + part.narrow(dim, half, half)
            part = torch.cat([pairs, part.narrow(dim, 2 * half, 1)], dim) if part.shape[dim] % 2 else pairs
        out[start:start + part.numel()] = part.flatten() / n
    return out


def execute(run, plan: "TensorPlan", source: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Carry out ``plan`` with the executor ``run`` (any backend's), honouring its ``offset``:
    that one is expanded on source + offset in fp64 and stored minus it, rounded once (norm
    gains only: vectors, so the fp64 copy is small)."""
    if not plan.offset:
        return run(plan, source, out)
    result = (run(plan, source.to(torch.float64) + plan.offset) - plan.offset).to(source.dtype)
    if out is None:
        return result
    out.view(-1).copy_(result.reshape(-1))
    return out


def extended_index(source: torch.Tensor, n_source: int) -> torch.Tensor:
    index = source.clone()
    index[source == MEAN] = n_source
    index[source == ONE] = n_source + 1
    index[source == ZERO] = n_source + 2
    return index


def _first_occurrence(values: torch.Tensor):
    uniq, inverse = torch.unique(values, return_inverse=True)
    first = torch.full((uniq.numel(),), values.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(values.numel()), reduce="amin")
    return uniq, first


@dataclass(frozen=True, eq=False)
class TensorPlan:
    """How one output tensor is made. See the module docstring for the formula."""

    name: str  # target parameter name
    source: str  # source parameter name
    source_shape: tuple[int, ...]
    shape: tuple[int, ...]  # output shape, stored layout
    split: int  # leading dims that form view axis 0
    axes: tuple[Axis, Axis]
    noise_axis: int | None = None
    noise_std: float = 0.0
    noise_key: int = 0
    inserted: bool = False  # part of a layer that did not exist in the source
    window: tuple[tuple[int, int], tuple[int, int]] | None = None  # view block covered; None = all
    offset: float = 0.0  # the tensor holds (value - offset): see the module docstring

    def __post_init__(self):
        if self.noise_axis is not None and self.axes[self.noise_axis].has_mean_or_one:
            raise ValueError(f"{self.name}: the noise axis may hold source indices and ZERO only, "
                             "not MEAN or ONE")
        if tuple(len(a) for a in self.axes) != self.view_shape:
            raise ValueError(f"{self.name}: axes of lengths {[len(a) for a in self.axes]} "
                             f"do not match the view {self.view_shape} of shape {self.shape}")

    # cached: a plan is immutable, and the executors' bookkeeping reads these dozens of times per tensor
    @cached_property
    def view_shape(self) -> tuple[int, int]:
        return (math.prod(self.shape[: self.split]), math.prod(self.shape[self.split:]))

    @cached_property
    def source_view_shape(self) -> tuple[int, int]:
        return (math.prod(self.source_shape[: self.split]), math.prod(self.source_shape[self.split:]))

    @cached_property
    def block(self) -> tuple[tuple[int, int], tuple[int, int]]:
        rows, cols = self.view_shape
        return self.window or ((0, rows), (0, cols))

    @property
    def has_noise(self) -> bool:
        return self.noise_axis is not None and self.noise_std != 0.0

    @cached_property
    def inexact_in_16_bits(self) -> bool:
        """Whether some value of this plan, stored in 16 bits, is not what the function needs:
        noisy copies (W/k plus or minus a perturbation, each rounded on its own, so the
        zero-sum noise no longer cancels), means (LEMON's average expansion), scales that are
        not powers of two (eta for non-multiple widths, 1/k for k copies, Gemma's embedding
        scale) and any scale of a gain stored with an offset. Copies, powers of two, 0 and 1
        are exact, and so is all of an inserted layer: it adds exactly 0 to the stream whatever
        its weights compute (cancel-zero writers, d and -d on units that compute the same bits,
        or sublayer norms of gain 0)."""
        if self.inserted:
            return False
        if self.has_noise:
            along = self.axes[self.noise_axis]
            nxt = along.next_replica
            copies = (nxt >= 0) & (nxt != torch.arange(len(along)))
            if along.scale is not None:
                copies &= along.scale != 0
            if bool(copies.any()):
                return True
        for axis in self.axes:
            if axis.has_mean:
                return True
            if axis.scale is None:
                continue
            scale = axis.scale[axis.source != ZERO]
            if self.offset and bool((scale != 1).any()):
                return True
            mantissa, _ = torch.frexp(scale[scale != 0])
            if bool((mantissa.abs() != 0.5).any()):
                return True
        return False

    @property
    def output_shape(self) -> tuple[int, ...]:
        """What an executor writes: the stored shape for the whole tensor, else the window's view block."""
        (r0, r1), (c0, c1) = self.block
        whole = self.block == ((0, self.view_shape[0]), (0, self.view_shape[1]))
        return self.shape if whole else (r1 - r0, c1 - c0)

    def check_source(self, source: torch.Tensor) -> None:
        if tuple(source.shape) != tuple(self.source_shape):
            raise ValueError(f"{self.name}: source {self.source} has shape {tuple(source.shape)}, "
                             f"the plan expects {tuple(self.source_shape)}")

    def window_maps(self, device: torch.device, dtype: torch.dtype):
        """Per view axis, over the window: (extended indices, scales in ``dtype`` or None)."""
        maps = []
        for axis, (lo, hi), n_source in zip(self.axes, self.block, self.source_view_shape):
            scale = None if axis.scale is None else axis.derived(
                ("scale", lo, hi, device, dtype), lambda: axis.scale[lo:hi].to(device=device, dtype=dtype))
            maps.append((axis.extended(n_source)[lo:hi], scale))
        return maps

    def restrict(self, axis: int, start: int, stop: int) -> "TensorPlan":
        """The plan of the view block ``[start, stop)`` along ``axis`` (within the current window)."""
        block = list(self.block)
        lo, hi = block[axis]
        if not 0 <= start <= stop <= hi - lo:
            raise ValueError(f"block [{start}, {stop}) outside axis {axis} of length {hi - lo}")
        block[axis] = (lo + start, lo + stop)
        return replace(self, window=tuple(block))

    def means(self, source_view: torch.Tensor, mean=None, row_means_in_pass: bool = False
              ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The side input of MEAN indices, fp64 (see :func:`mean_along`), computed only where the
        plan uses it: (per source row, its mean along axis 1: for MEAN columns; per source
        column, its mean along axis 0: for MEAN rows; the mean of the row means: for both).
        ``mean``: another implementation of :func:`mean_along` with its bits (the C++ one).
        ``row_means_in_pass``: for an executor that takes each row's mean in its own pass: no
        row means unless the total needs them."""
        mean = mean or mean_along
        mean_rows, mean_cols = (a.has_mean for a in self.axes)
        row_means = mean(source_view, 1) if mean_cols and (mean_rows or not row_means_in_pass) else None
        col_means = mean(source_view, 0) if mean_rows else None
        total = mean(row_means[:, None], 0) if mean_rows and mean_cols else None
        return row_means, col_means, total

    def new_mask(self) -> torch.Tensor:
        """Boolean tensor of ``shape``: True where the element is new (not a copy of the
        first replica of a source element); everything in an inserted layer is new."""
        if self.inserted:
            return torch.ones(self.shape, dtype=torch.bool)
        rows, cols = (a.is_new() for a in self.axes)
        return (rows[:, None] | cols[None, :]).reshape(self.shape)

    def describe(self) -> str:
        def axis_text(axis: Axis) -> str:
            src = axis.source
            specials = ", ".join(f"{(src == v).sum().item()} {n}" for v, n in SPECIAL_NAMES.items()
                                 if (src == v).any())
            sourced = src[src >= 0]
            text = f"{len(axis)} from {sourced.unique().numel()} sources"
            return text + (f" + {specials}" if specials else "")

        noise = (f", noise std {self.noise_std:g} on axis {self.noise_axis}" if self.has_noise else "")
        return (f"{self.name} {tuple(self.shape)} <- {self.source} {tuple(self.source_shape)}: "
                f"axis 0: {axis_text(self.axes[0])}; axis 1: {axis_text(self.axes[1])}{noise}"
                + (" [inserted layer]" if self.inserted else ""))

    def __repr__(self) -> str:  # the axes hold a tensor per output index: describe them, do not print them
        window = "" if self.window is None else f", window {self.window}"
        return f"TensorPlan({self.describe()}{window})"


@dataclass(eq=False)
class ExpansionPlan:
    """Everything an expansion does, before any byte moves: the new config, one
    :class:`TensorPlan` per target parameter, and which target layers are new."""

    family: str
    source_sizes: dict[str, int]
    target_sizes: dict[str, int]
    config: object  # the target transformers config
    tensors: dict[str, TensorPlan]
    tied: dict[str, str]  # target name -> name of the tensor it shares storage with
    layers: list[tuple[int, bool]]  # per target layer: (source layer, inserted?)
    seed: int
    noise_std: float
    notes: list[str] = field(default_factory=list)
    # (the target built on the meta device while checking the plan, its class): see meta_target
    skeleton: tuple | None = field(default=None, repr=False)

    def __getitem__(self, name: str) -> TensorPlan:
        return self.tensors[self.tied.get(name, name)]

    def __repr__(self) -> str:  # a line, not every tensor plan's index maps (``summary()`` lists them)
        inserted = sum(inserted for _, inserted in self.layers)
        return (f"ExpansionPlan({self.family}: {self.sizes_text(changed_only=True) or 'no size changes'}; "
                f"{len(self.tensors)} tensor plans, {inserted} inserted layer(s), seed {self.seed}, "
                f"noise_std {self.noise_std:g})")

    def meta_target(self) -> torch.nn.Module:
        """The target model on the meta device (names and shapes, no memory) for a caller to fill:
        the one planning built to check the plan, handed out once (building a model's modules is a
        fixed cost that small models feel), then a new one on each call."""
        from .rules import empty_model

        if self.skeleton is None:
            raise ValueError("this plan was not made by lemon.expand_plan: it has no model class to build")
        model, cls = self.skeleton
        if model is None:
            return empty_model(cls, self.config)
        self.skeleton = (None, cls)
        return model

    def new_parameters(self) -> list[str]:
        """Names of target parameters that belong to inserted layers."""
        return [n for n, p in self.tensors.items() if p.inserted]

    def manifest(self) -> dict:
        """A JSON-serializable record: sizes, seed, layers, and per tensor its source and
        how many of its elements are new (to freeze, log or audit them)."""
        tensors = {}
        for name, plan in self.tensors.items():
            new = plan.new_mask()
            tensors[name] = {
                "source": plan.source, "shape": list(plan.shape), "source_shape": list(plan.source_shape),
                "inserted": plan.inserted, "new_elements": int(new.sum()), "elements": new.numel(),
            }
        return {
            "family": self.family, "source_sizes": self.source_sizes, "target_sizes": self.target_sizes,
            "seed": self.seed, "noise_std": self.noise_std,
            "layers": [{"source_layer": s, "inserted": ins} for s, ins in self.layers],
            "tied": self.tied, "tensors": tensors, "notes": self.notes,
        }

    def sizes_text(self, changed_only: bool = False) -> str:
        """``name source -> target`` for each size the family has a setting for (GPT-2 has no
        KV-head count to show), optionally only those that change."""
        from .architectures import find_family

        fields = find_family(self.config).config_fields
        return ", ".join(f"{k} {self.source_sizes[k]} -> {v}" for k, v in self.target_sizes.items()
                         if fields.get(k, k) is not None and not (changed_only and v == self.source_sizes[k]))

    def summary(self) -> str:
        lines = [f"{self.family}: {self.sizes_text()}",
                 "layers: " + " ".join(f"{s}{'+' if ins else ''}" for s, ins in self.layers)]
        lines += [p.describe() for p in self.tensors.values()]
        lines += [f"{alias} is tied to {name}" for alias, name in self.tied.items()]
        return "\n".join(lines + self.notes)
