"""The plan IR: for every output tensor, how each of its elements is made from a source tensor.

A tensor is seen through a 2-D *view*: its first ``split`` dimensions form axis 0,
the rest form axis 1 (a bias is ``(1, n)``, a conv kernel ``(out, in*kh*kw)``,
ViT's CLS token ``(1, hidden)``). Over that view, with S the source view::

    out[i, j] = S~[row[i], col[j]] * row_scale[i] * col_scale[j] + noise(i, j)

``row``/``col`` hold a source index per output index, or a special value:
``ZERO`` (the element is 0 and wins over everything), ``ONE`` (the element is 1,
e.g. an identity-affine norm), ``MEAN`` (the mean of S along that axis: LEMON's
average expansion). Noise lives on at most one axis, the *noise axis*:

* the output indices of that axis that share a source index form a *replica
  group*; each element gets ``R(i, j) - mean of R over its group`` (zero-sum),
  so the replicas of a split weight still sum to the original. A group of one
  gets exactly zero.
* output indices of that axis with source ``ZERO`` get ``R`` itself (free
  weights that multiply an input known to be zero).
* elements whose *other* axis index is ``ZERO`` get no noise: they must stay 0.

``R(i, j) = std * standard_noise(key, i * n_cols + j)`` (see :mod:`lemon.noise`);
the group mean is accumulated in fp32 in ascending output-index order, then
divided by the group size. Arithmetic is in fp32 (fp64 for fp64 sources) in the
order written above, rounded once to the output dtype.

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
SPECIAL_NAMES = {ZERO: "zero", MEAN: "mean", ONE: "one"}


@dataclass(frozen=True, eq=False)
class Axis:
    """The source index (or ZERO/MEAN/ONE) and scale of every output index of one view axis."""

    source: torch.Tensor  # int64 [n]
    scale: torch.Tensor | None = None  # float32 [n]; None means 1 everywhere

    def __post_init__(self):
        if self.scale is not None and self.scale.shape != self.source.shape:
            raise ValueError("an axis needs one scale per output index")

    def __len__(self) -> int:
        return self.source.numel()

    @cached_property
    def replica_groups(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(group_of, members)``: the replica group of every output index (-1 if not
        sourced), and per group its output indices in ascending order, padded with -1."""
        sourced = torch.nonzero(self.source >= 0).flatten()
        group_of = torch.full_like(self.source, -1)
        if sourced.numel() == 0:
            return group_of, torch.empty(0, 1, dtype=torch.int64)
        groups, inverse, counts = torch.unique(
            self.source[sourced], return_inverse=True, return_counts=True
        )
        group_of[sourced] = inverse
        order = torch.sort(inverse, stable=True).indices  # members ascending within a group
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(sourced.numel()) - torch.repeat_interleave(starts, counts)
        members = torch.full((groups.numel(), int(counts.max())), -1, dtype=torch.int64)
        members[inverse[order], rank] = sourced[order]
        return group_of, members

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

    def __post_init__(self):
        if self.noise_axis is not None and bool((self.axes[self.noise_axis].source < ZERO).any()):
            raise ValueError(f"{self.name}: the noise axis may hold source indices and ZERO only, "
                             "not MEAN or ONE")
        if tuple(len(a) for a in self.axes) != self.view_shape:
            raise ValueError(f"{self.name}: axes of lengths {[len(a) for a in self.axes]} "
                             f"do not match the view {self.view_shape} of shape {self.shape}")

    @property
    def view_shape(self) -> tuple[int, int]:
        return (math.prod(self.shape[: self.split]), math.prod(self.shape[self.split:]))

    @property
    def source_view_shape(self) -> tuple[int, int]:
        return (math.prod(self.source_shape[: self.split]), math.prod(self.source_shape[self.split:]))

    @property
    def block(self) -> tuple[tuple[int, int], tuple[int, int]]:
        rows, cols = self.view_shape
        return self.window or ((0, rows), (0, cols))

    @property
    def has_noise(self) -> bool:
        return self.noise_axis is not None and self.noise_std != 0.0

    def restrict(self, axis: int, start: int, stop: int) -> "TensorPlan":
        """The plan of the view block ``[start, stop)`` along ``axis`` (within the current window)."""
        block = list(self.block)
        lo, hi = block[axis]
        if not 0 <= start <= stop <= hi - lo:
            raise ValueError(f"block [{start}, {stop}) outside axis {axis} of length {hi - lo}")
        block[axis] = (lo + start, lo + stop)
        return replace(self, window=tuple(block))

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

    def __getitem__(self, name: str) -> TensorPlan:
        return self.tensors[self.tied.get(name, name)]

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

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {self.source_sizes[k]} -> {v}" for k, v in self.target_sizes.items())
        lines = [f"{self.family}: {sizes}",
                 "layers: " + " ".join(f"{s}{'+' if ins else ''}" for s, ins in self.layers)]
        lines += [p.describe() for p in self.tensors.values()]
        lines += [f"{alias} is tied to {name}" for alias, name in self.tied.items()]
        return "\n".join(lines + self.notes)
