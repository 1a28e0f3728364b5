"""The reference executor (lemon.reference.execute) against an independent, slow oracle.

The oracle below implements lemon/plan.py's module docstring literally, element by element,
in plain Python, with the plain-Python noise spec (``centred_int``)::

    out[i, j] = S~[row[i], col[j]] * row_scale[i] * col_scale[j] + noise(i, j)

    counter(i, j) = class * len(noise axis) + t    (t: noise-axis index, class: the other's extended index)
    noise(i, j)   = c(counter) * free                                  t's source is ZERO
                  = (c(counter) - c(class * len + next(t))) * replica  t's source is s >= 0
                  = 0                                                  the other axis's index is ZERO

with the documented rounding: fp32 (fp64 for fp64 sources), ``((S~ * rs) * cs) + noise``,
scales rounded once from fp64, ``free``/``replica`` rounded once, the integer difference exact.
Every step is one IEEE operation, so the oracle is bit-exact and every element is compared
with ``==``: MEAN entries too, since the spec fixes their summation order (an fp64 pairwise
tree, :func:`lemon.plan.mean_along`, written out again below in Python floats).

A noise axis holds source indices and ZERO only (a plan with MEAN or ONE there is refused),
so the random plans here keep MEAN/ONE on the other axis.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from lemon import reference
from lemon.noise import centred_int, scales, tensor_key
from lemon.plan import MEAN, ONE, ZERO, Axis, TensorPlan
from lemon.reference import execute


# ---------------------------------------------------------------- the oracle

def _f32(x: float) -> float:
    """x rounded once to fp32 (round to nearest even), back as a Python float."""
    return float(np.float32(x))


def _next_replica(sources: list[int]) -> list[int]:
    """next(t): the next larger index with the same source, wrapping to the smallest; -1 if special."""
    groups: dict[int, list[int]] = {}
    for t, s in enumerate(sources):
        if s >= 0:
            groups.setdefault(s, []).append(t)
    nxt = [-1] * len(sources)
    for members in groups.values():
        for k, t in enumerate(members):
            nxt[t] = members[(k + 1) % len(members)]
    return nxt


def _class(s: int, n_source: int) -> int:
    """The extended index of a source index or special (s, n for MEAN, n + 1 for ONE, n + 2 for ZERO)."""
    return s if s >= 0 else n_source + {MEAN: 0, ONE: 1, ZERO: 2}[s]


def _tree_mean(values: list[float]) -> float:
    """lemon.plan.mean_along's definition in Python floats (IEEE fp64): line i plus line
    i + half, a last odd line carried up, then one division."""
    part = list(values)
    while len(part) > 1:
        half = len(part) // 2
        part = [part[i] + part[i + half] for i in range(half)] + part[2 * half:]
    return part[0] / len(values)


def oracle(plan: TensorPlan, source: torch.Tensor) -> list[list[float]]:
    """The plan's block (its window) as nested lists of Python floats holding compute-dtype values."""
    fp64 = source.dtype == torch.float64
    rnd = (lambda x: x) if fp64 else _f32
    n_src_rows, n_src_cols = plan.source_view_shape
    S = source.reshape(n_src_rows, n_src_cols).double().tolist()
    src = [a.source.tolist() for a in plan.axes]
    scale = [a.scale.tolist() if a.scale is not None else [1.0] * len(a) for a in plan.axes]  # fp64
    row_means = [_tree_mean(row) for row in S]  # fp64, the side input before rounding

    def s_tilde(r, c):
        if r == ZERO or c == ZERO:
            return 0.0
        if r == ONE or c == ONE:
            return 1.0
        if r == MEAN and c == MEAN:
            return rnd(_tree_mean(row_means))  # the mean of the row means
        if r == MEAN:
            return rnd(_tree_mean([S[k][c] for k in range(n_src_rows)]))
        if c == MEAN:
            return rnd(row_means[r])
        return S[r][c]

    noise = None
    if plan.has_noise:
        ax = plan.noise_axis
        along, other = src[ax], src[1 - ax]
        length, n_other = len(along), plan.source_view_shape[1 - ax]
        nxt = _next_replica(along)
        free, replica = (rnd(m) for m in scales(plan.noise_std))
        key = plan.noise_key

        def noise(t, o):
            if other[o] == ZERO:
                return 0.0
            at = _class(other[o], n_other) * length
            c = centred_int(key, at + t)
            if along[t] == ZERO:
                return rnd(c * free)
            assert along[t] >= 0, "a noise axis holds sourced or ZERO indices only"
            return rnd((c - centred_int(key, at + nxt[t])) * replica)

    (r0, r1), (c0, c1) = plan.block
    want = []
    for i in range(r0, r1):
        want.append([])
        for j in range(c0, c1):
            rs, cs = rnd(scale[0][i]), rnd(scale[1][j])  # each rounded once from fp64
            value = rnd(rnd(s_tilde(src[0][i], src[1][j]) * rs) * cs)
            if noise is not None:
                value = rnd(value + (noise(i, j) if plan.noise_axis == 0 else noise(j, i)))
            want[-1].append(value)
    return want


def check(plan: TensorPlan, source: torch.Tensor, got: torch.Tensor) -> None:
    """Assert ``got`` (the executor's output for the plan's block) is what the oracle says, bit
    for bit. A half-precision output must be the fp32 value rounded once."""
    want = torch.tensor(oracle(plan, source), dtype=torch.float64)
    if got.dtype in (torch.bfloat16, torch.float16):
        want = want.float().to(got.dtype).double()  # exact: want holds fp32 values
    assert want.abs().max().item() > 0, "degenerate case: everything is zero"
    g = got.reshape(want.shape).double()
    bad = torch.nonzero(g != want)
    if bad.numel():
        i, j = bad[0].tolist()
        raise AssertionError(f"{bad.shape[0]} elements differ, first at {(i, j)} of the block: "
                             f"got {g[i, j].item()!r}, want {want[i, j].item()!r}")


def view(plan: TensorPlan, out: torch.Tensor) -> torch.Tensor:
    (r0, r1), (c0, c1) = plan.block
    return out.reshape(r1 - r0, c1 - c0)


# ---------------------------------------------------------------- plans

def _random_map(rng: random.Random, n_out: int, n_src: int, specials: tuple[int, ...]) -> torch.Tensor:
    """Mostly a circular map with a non-multiple residue, then random sources and specials."""
    out = []
    for i in range(n_out):
        roll = rng.random()
        if specials and roll < 0.2:
            out.append(rng.choice(specials))
        elif roll < 0.6:
            out.append(i % n_src)
        else:
            out.append(rng.randrange(n_src))
    return torch.tensor(out, dtype=torch.int64)


def _random_scale(rng: random.Random, n: int):
    if rng.random() < 0.15:
        return None
    return torch.tensor([rng.uniform(-1.5, 1.5) for _ in range(n)], dtype=torch.float64)  # not fp32 values


def _split_scale(index: torch.Tensor) -> torch.Tensor:
    """1 / (number of replicas) for sourced indices, 1 for specials."""
    counts = {s: c for s, c in zip(*np.unique(index.numpy(), return_counts=True))}
    return torch.tensor([1.0 / counts[s] if s >= 0 else 1.0 for s in index.tolist()], dtype=torch.float64)


def _source(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) + 0.25  # never zeros


def plan_with_noise_on(noise_axis: int, noise: Axis, other: Axis, n_source_noise: int, n_source_other: int,
                       name: str, std: float, seed: int = 0) -> TensorPlan:
    """A 2-D plan whose noise lies on ``noise_axis``, with the given maps for that axis and the other."""
    axes = [noise, other] if noise_axis == 0 else [other, noise]
    src_shape = (n_source_noise, n_source_other) if noise_axis == 0 else (n_source_other, n_source_noise)
    return TensorPlan(name=name, source=name, source_shape=src_shape,
                      shape=(len(axes[0]), len(axes[1])), split=1, axes=tuple(axes),
                      noise_axis=noise_axis, noise_std=std, noise_key=tensor_key(seed, name))


def random_plan(seed: int, n_rows: int, n_cols: int, noise_axis, n_src_rows=None, n_src_cols=None,
                std: float = 0.05) -> tuple[TensorPlan, torch.Tensor]:
    rng = random.Random(seed)
    n_src_rows = n_src_rows or rng.choice([1, 2, 3, 5])
    n_src_cols = n_src_cols or rng.choice([1, 2, 3, 5])
    all_specials = (ZERO, ONE, MEAN)
    axes = []
    for a, (n_out, n_src) in enumerate(((n_rows, n_src_rows), (n_cols, n_src_cols))):
        specials = (ZERO,) if a == noise_axis else all_specials
        axes.append(Axis(_random_map(rng, n_out, n_src, specials), _random_scale(rng, n_out)))
    plan = TensorPlan(
        name=f"t{seed}.weight", source=f"s{seed}.weight", source_shape=(n_src_rows, n_src_cols),
        shape=(n_rows, n_cols), split=1, axes=tuple(axes), noise_axis=noise_axis,
        noise_std=std if noise_axis is not None else 0.0, noise_key=tensor_key(seed, f"t{seed}.weight"))
    return plan, _source((n_src_rows, n_src_cols), seed)


SHAPES = list(itertools.product([1, 7, 33], [1, 7, 33]))


# ---------------------------------------------------------------- against the oracle

@pytest.mark.parametrize("noise_axis", [None, 0, 1])
@pytest.mark.parametrize("n_rows,n_cols", SHAPES)
def test_execute_matches_the_elementwise_oracle_on_random_plans(n_rows, n_cols, noise_axis):
    checked = 0
    for rep in range(2):
        seed = 1000 * n_rows + 10 * n_cols + rep + (0 if noise_axis is None else 100_000 * (noise_axis + 1))
        plan, source = random_plan(seed, n_rows, n_cols, noise_axis)
        got = execute(plan, source)
        assert got.shape == plan.shape and got.dtype == torch.float32
        if not got.any():
            continue  # e.g. a single ZERO row; the other repetition checks a real case
        check(plan, source, got)
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("noise_axis", [0, 1])
def test_execute_matches_the_oracle_with_replica_groups_and_free_zero_entries(noise_axis):
    # A hand-made non-multiple expansion: 3 -> 8 with a ZERO residue on the noise axis,
    # every special on the other axis, and non-trivial scales on both.
    noise_map = torch.tensor([0, 1, 2, 0, 1, 2, ZERO, ZERO])
    other_map = torch.tensor([0, 1, MEAN, ONE, ZERO, 1, 0])
    noise_scale = torch.tensor([0.5, 0.25, 0.5, 0.5, 0.75, 0.5, 1.0, 1.0])
    other_scale = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0, 1.0, 0.125])
    plan = plan_with_noise_on(noise_axis, Axis(noise_map, noise_scale), Axis(other_map, other_scale),
                              3, 2, name="w", std=0.3)
    source = torch.tensor([[1.0, -2.0], [0.5, 4.0], [-3.0, 0.25]])
    if noise_axis == 1:
        source = source.T.contiguous()
    got = execute(plan, source)
    check(plan, source, got)
    v = got if noise_axis == 0 else got.T
    assert torch.all(v[:, 4] == 0)  # the other axis is ZERO there: no noise, exactly 0
    assert torch.all(v[6:, [0, 1, 2, 3, 5, 6]] != 0)  # free noise on ZERO noise-axis indices
    assert not torch.equal(v[6], v[7])  # two free entries: two different counters


@pytest.mark.parametrize("noise_axis", [0, 1])
def test_a_noise_free_plan_is_the_bare_product_and_zero_std_adds_nothing(noise_axis):
    plan, source = random_plan(4242 + noise_axis, 33, 7, noise_axis, std=0.0)
    assert not plan.has_noise
    got = execute(plan, source)
    check(plan, source, got)
    quiet = replace(plan, noise_axis=None)
    assert torch.equal(got, execute(quiet, source))


def test_execute_matches_the_oracle_in_fp64_to_double_precision():
    for seed, noise_axis in [(7, 1), (8, 0), (9, None)]:
        plan, source = random_plan(seed, 33, 7, noise_axis, n_src_rows=5, n_src_cols=3)
        source = source.double() + torch.rand(source.shape, dtype=torch.float64,
                                              generator=torch.Generator().manual_seed(seed)) * 1e-9
        got = execute(plan, source)
        assert got.dtype == torch.float64
        check(plan, source, got)  # fp64 arithmetic, bit for bit
        # really fp64 arithmetic, not fp32 widened
        assert not torch.equal(got, execute(plan, source.float()).double())


@pytest.mark.parametrize("noise_axis", [None, 0, 1])
def test_execute_writes_every_element_of_a_nan_poisoned_out(noise_axis):
    plan, source = random_plan(31, 33, 7, noise_axis)
    out = torch.full(plan.shape, float("nan"))
    result = execute(plan, source, out=out)
    assert result is out
    assert not torch.isnan(out).any()
    assert torch.equal(out, execute(plan, source))
    # and a restricted plan writing into a poisoned block
    block_plan = plan.restrict(1, 2, 6).restrict(0, 5, 30)
    block = torch.full((25, 4), float("nan"))
    assert execute(block_plan, source, out=block) is block
    assert not torch.isnan(block).any()
    assert torch.equal(block, out[5:30, 2:6])


@pytest.mark.parametrize("chunk", [1, 40])
@pytest.mark.parametrize("noise_axis", [None, 0, 1])
def test_execute_is_independent_of_the_chunk_size(monkeypatch, noise_axis, chunk):
    plan, source = random_plan(77, 33, 33, noise_axis)
    whole = execute(plan, source)
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", chunk)  # chunks of one or two lines
    assert torch.equal(execute(plan, source), whole)
    for axis in (0, 1):
        part = execute(plan.restrict(axis, 3, 30), source)
        assert torch.equal(part, whole[3:30] if axis == 0 else whole[:, 3:30])
    assert torch.equal(execute(plan.restrict(0, 1, 32).restrict(1, 4, 11), source), whole[1:32, 4:11])


def test_execute_rejects_a_source_of_the_wrong_shape():
    plan, source = random_plan(3, 7, 7, None, n_src_rows=3, n_src_cols=2)
    with pytest.raises(ValueError, match="expects"):
        execute(plan, torch.zeros(2, 3))


# ---------------------------------------------------------------- replicas on the other axis

@pytest.mark.parametrize("noise_axis", [0, 1])
def test_replicas_on_the_non_noise_axis_are_bit_identical_noise_included(noise_axis):
    # The other axis (not summed) has replicas of sources 0, 2, of MEAN and of ONE, each with
    # one scale per source; the noise axis has replica groups and free ZERO entries.
    other_map = torch.tensor([0, 1, 2, 0, MEAN, 2, MEAN, ONE, 3, ONE, 0, ZERO, 2])
    per_source = {0: 0.7, 1: -1.3, 2: 0.45, 3: 1.1, MEAN: 2.5, ONE: 0.3, ZERO: 1.0}
    other_scale = torch.tensor([per_source[s] for s in other_map.tolist()], dtype=torch.float64)
    noise_map = torch.tensor([i % 5 for i in range(29)] + [ZERO, ZERO, ZERO])
    plan = plan_with_noise_on(noise_axis, Axis(noise_map, _split_scale(noise_map)), Axis(other_map, other_scale),
                              5, 4, name="layers.3.mlp.up_proj.weight", std=0.1, seed=3)
    source = _source(plan.source_shape, 3)
    got = execute(plan, source)
    check(plan, source, got)
    lines = got if noise_axis == 1 else got.T  # lines[o] = everything output index o of the other axis makes
    srcs = other_map.tolist()
    for a, b in itertools.combinations(range(len(srcs)), 2):
        if srcs[a] == srcs[b]:
            assert torch.equal(lines[a], lines[b]), (a, b)
        else:
            assert not torch.equal(lines[a], lines[b]), (a, b)
    assert (lines[11] == 0).all()  # ZERO on the other axis: no noise either


@pytest.mark.parametrize("noise_axis", [0, 1])
def test_noise_follows_the_class_not_the_position_on_the_other_axis(noise_axis):
    plan, source = random_plan(606 + noise_axis, 33, 33, noise_axis)
    perm = torch.randperm(33, generator=torch.Generator().manual_seed(noise_axis))
    axes = list(plan.axes)
    other = axes[1 - noise_axis]
    axes[1 - noise_axis] = Axis(other.source[perm], None if other.scale is None else other.scale[perm])
    permuted = replace(plan, axes=tuple(axes))
    got, want = execute(permuted, source), execute(plan, source)
    assert torch.equal(got, want[perm] if noise_axis == 1 else want[:, perm])


def test_a_different_key_gives_different_noise():
    plan, source = random_plan(17, 7, 33, 1)
    other = replace(plan, noise_key=plan.noise_key ^ 1)
    a, b = execute(plan, source), execute(other, source)
    assert not torch.equal(a, b)
    check(other, source, b)


# ---------------------------------------------------------------- replica groups on the noise axis

@pytest.mark.parametrize("noise_axis", [0, 1])
def test_replica_groups_of_2_3_and_16_sum_to_the_source(noise_axis):
    sizes = {0: 2, 1: 3, 2: 16, 3: 1}
    noise_map = [s for s, k in sizes.items() for _ in range(k)] + [ZERO, ZERO]
    random.Random(noise_axis).shuffle(noise_map)  # interleaved groups; next() wraps anywhere
    noise_map = torch.tensor(noise_map)
    other_map = torch.tensor([0, 1, 2, 3, 4, 5, MEAN, ONE, 2])
    plan = plan_with_noise_on(noise_axis, Axis(noise_map, _split_scale(noise_map)), Axis(other_map),
                              4, 6, name="split", std=0.5, seed=1)
    source = _source(plan.source_shape, 11)
    out = execute(plan, source)
    check(plan, source, out)
    out = out.double()
    lines = out.T if noise_axis == 0 else out  # lines[o, t]
    summed = torch.zeros(len(other_map), 4, dtype=torch.float64)
    for t, s in enumerate(noise_map.tolist()):
        if s >= 0:
            summed[:, s] += lines[:, t]
    # what the sum should be: the source's line of each other-axis index (MEAN: its mean, ONE: 1)
    src = source.double() if noise_axis == 1 else source.double().T  # src[other source, noise source]
    expected = torch.stack([src.mean(0) if o == MEAN else torch.ones(4, dtype=torch.float64) if o == ONE
                            else src[o] for o in other_map.tolist()])
    torch.testing.assert_close(summed, expected, rtol=1e-6, atol=1e-6)
    # the noise really is there: replicas differ from plain 1/n copies, the group of one has none
    plain = torch.stack([expected[:, s] / sizes[s] if s >= 0 else torch.zeros(9, dtype=torch.float64)
                         for s in noise_map.tolist()], 1)
    alone = noise_map.tolist().index(3)
    assert (lines - plain)[:, noise_map != 3].abs().min().item() > 0
    assert (lines - plain).abs().max().item() > 0.1
    assert torch.allclose(lines[:, alone], plain[:, alone], rtol=1e-7, atol=0)


@pytest.mark.parametrize("noise_axis", [0, 1])
def test_a_pair_gets_exactly_antisymmetric_noise(noise_axis):
    # A scale of 0 leaves only the noise: (c_a - c_b) r and (c_b - c_a) r, negatives bit for bit.
    noise_map = torch.tensor([ZERO, 1, 0, 2, 0, 1, 1])  # source 0: a pair; source 1: a triple
    noise_scale = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    other_map = torch.tensor([0, 2, 1, MEAN, ONE, 4, 0])
    plan = plan_with_noise_on(noise_axis, Axis(noise_map, noise_scale), Axis(other_map),
                              3, 5, name="pair", std=0.02, seed=5)
    source = _source(plan.source_shape, 5)
    out = execute(plan, source)
    check(plan, source, out)
    lines = out.T if noise_axis == 0 else out  # lines[o, t]
    assert (lines[:, 2] != 0).all()
    assert torch.equal(lines[:, 2], -lines[:, 4])
    # the triple's noise is three differences of integers: their fp32 sum is within rounding of 0
    triple = lines[:, [1, 5, 6]].double()
    assert triple.sum(1).abs().max().item() <= 3 * 2.0**-24 * triple.abs().max().item()


@pytest.mark.parametrize("noise_axis", [0, 1])
def test_replica_noise_has_the_requested_std_and_bound(noise_axis):
    std = 0.02
    n_t, n_o = 256, 257
    noise_map = torch.arange(n_t) // 2  # 128 pairs
    plan = plan_with_noise_on(noise_axis, Axis(noise_map, torch.zeros(n_t, dtype=torch.float64)),
                              Axis(torch.arange(n_o)), n_t // 2, n_o, name="rep", std=std, seed=6)
    out = execute(plan, _source(plan.source_shape, 6)).double()
    lines = out.T if noise_axis == 0 else out
    first = lines[:, 0::2]  # one member of each pair: independent differences of four uniforms
    assert torch.equal(first, -lines[:, 1::2])
    assert abs(first.std().item() / std - 1) < 0.02  # 33k draws: standard error ~4e-3
    assert abs(first.mean().item()) < 0.02 * std
    assert first.abs().max().item() <= 2 * math.sqrt(3) * std


@pytest.mark.parametrize("noise_axis", [0, 1])
def test_zero_entries_on_the_noise_axis_get_free_noise_of_the_requested_std(noise_axis):
    std = 0.05
    n_t, n_o = 150, 257
    noise_map = torch.tensor([ZERO] * (n_t - 1) + [0])
    other_map = torch.cat([torch.arange(n_o - 2), torch.tensor([MEAN, ONE])])
    plan = plan_with_noise_on(noise_axis, Axis(noise_map), Axis(other_map), 1, n_o - 2,
                              name="free", std=std, seed=7)
    out = execute(plan, _source(plan.source_shape, 7)).double()
    lines = out.T if noise_axis == 0 else out
    free = lines[:, :-1]
    assert abs(free.std().item() / std - 1) < 0.02  # 38k draws: standard error ~3e-3
    assert abs(free.mean().item()) < 0.02 * std
    assert free.abs().max().item() <= math.sqrt(6) * std
    assert free.abs().max().item() > 2 * std
    # the one sourced entry is a group of one: exactly the noise-free value
    quiet = execute(replace(plan, noise_axis=None), _source(plan.source_shape, 7)).double()
    quiet_lines = quiet.T if noise_axis == 0 else quiet
    assert torch.equal(lines[:, -1], quiet_lines[:, -1])
    assert (quiet_lines[:, :-1] == 0).all()  # ZERO entries: the noise is all there is


def test_a_group_of_one_gets_exactly_zero_noise():
    plan = TensorPlan(name="g1", source="g1", source_shape=(3, 4), shape=(3, 4), split=1,
                      axes=(Axis(torch.arange(3)), Axis(torch.arange(4))), noise_axis=0,
                      noise_std=1.0, noise_key=tensor_key(0, "g1"))
    source = _source((3, 4), 0)
    assert torch.equal(execute(plan, source), source)


# ---------------------------------------------------------------- counters above 2^32

def _big_counter_plan(noise_axis: int):
    """A noise axis of L = 70001 and other-axis classes around 2^32 / L: class 61355's counters
    cross 2^32 inside the noise axis, at t = 55941; MEAN's class (61400) lies wholly above."""
    L, n_other = 70001, 61400
    c0 = (1 << 32) // L
    boundary = (1 << 32) - c0 * L
    t = torch.arange(L)
    noise_map = torch.where(t % 11 == 3, torch.full_like(t, ZERO), t % 5)
    noise_scale = torch.rand(L, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    other_map = torch.tensor([c0, 0, c0 - 1, MEAN, ONE, c0, ZERO, n_other - 1, c0 + 1])
    plan = plan_with_noise_on(noise_axis, Axis(noise_map, noise_scale), Axis(other_map), 5, n_other,
                              name="model.embed_tokens.weight", std=0.02, seed=9)
    return plan, _source(plan.source_shape, 9), boundary


@pytest.mark.parametrize("noise_axis", [0, 1])
def test_counters_beyond_2_pow_32_match_the_oracle_in_restricted_windows(noise_axis):
    plan, source, boundary = _big_counter_plan(noise_axis)
    L = len(plan.axes[noise_axis])
    assert 61355 * L < (1 << 32) < 61355 * L + L and 61400 * L > 1 << 32
    for start, stop in [(boundary - 40, boundary + 40), (L - 25, L), (0, 12)]:
        block = plan.restrict(noise_axis, start, stop)
        got = execute(block, source)
        assert got.shape == ((stop - start, 9) if noise_axis == 0 else (9, stop - start))
        check(block, source, got)
    # a nested 2-D block across the boundary is the slice of the 1-D block
    strip = plan.restrict(noise_axis, boundary - 40, boundary + 40)
    whole_strip = execute(strip, source)
    nested = strip.restrict(noise_axis, 30, 50).restrict(1 - noise_axis, 2, 7)
    got = execute(nested, source)
    assert torch.equal(got, whole_strip[30:50, 2:7] if noise_axis == 0 else whole_strip[2:7, 30:50])


# ---------------------------------------------------------------- restrict

def _restrict_plan(noise_axis):
    # replica groups {0, 5, 10, ...} along the noise axis, so any block cuts groups in the middle
    rows = torch.cat([torch.arange(33) % 5, torch.tensor([ZERO, ZERO])]) if noise_axis == 0 \
        else torch.tensor([0, 1, MEAN, 2, ONE, 0, ZERO, 1, 2, 2, 0, 1, 1])
    cols = torch.cat([torch.arange(31) % 4, torch.tensor([ZERO])]) if noise_axis == 1 \
        else torch.tensor([3, MEAN, 0, 1, ZERO, 2, 3, 0, ONE])
    n_src_rows, n_src_cols = 5 if noise_axis == 0 else 3, 4
    rng = torch.Generator().manual_seed(5)
    plan = TensorPlan(name="r", source="r", source_shape=(n_src_rows, n_src_cols),
                      shape=(len(rows), len(cols)), split=1,
                      axes=(Axis(rows, torch.rand(len(rows), generator=rng, dtype=torch.float64) + 0.5),
                            Axis(cols)),
                      noise_axis=noise_axis, noise_std=0.2, noise_key=tensor_key(9, "r"))
    return plan, torch.randn(n_src_rows, n_src_cols, generator=rng)


@pytest.mark.parametrize("noise_axis", [0, 1])
@pytest.mark.parametrize("axis", [0, 1])
def test_a_restricted_plan_gives_exactly_the_slice_of_the_whole_output(noise_axis, axis):
    plan, source = _restrict_plan(noise_axis)
    whole = execute(plan, source)
    check(plan, source, whole)
    length = plan.view_shape[axis]
    for start, stop in [(0, length), (0, 1), (3, 17 if length > 17 else length - 1), (length - 1, length),
                        (2, 2), (1, length - 1), (6, 8)]:
        block = plan.restrict(axis, start, stop)
        part = execute(block, source)
        expected = whole[start:stop] if axis == 0 else whole[:, start:stop]
        assert part.shape == expected.shape
        assert torch.equal(part, expected), (start, stop)
        if part.numel() and part.any():
            check(block, source, part)


@pytest.mark.parametrize("noise_axis", [0, 1])
def test_nested_restrictions_compose_to_a_2d_block(noise_axis):
    plan, source = _restrict_plan(noise_axis)
    whole = execute(plan, source)
    block = plan.restrict(0, 2, 11).restrict(1, 1, 8).restrict(0, 3, 7)  # rows 5..9, cols 1..8
    assert block.block == ((5, 9), (1, 8))
    assert torch.equal(execute(block, source), whole[5:9, 1:8])
    check(block, source, execute(block, source))


def test_restrict_rejects_a_block_outside_the_window():
    plan, _ = _restrict_plan(0)
    with pytest.raises(ValueError):
        plan.restrict(0, 3, 100)
    with pytest.raises(ValueError):
        plan.restrict(1, 0, 5).restrict(1, 2, 6)


# ---------------------------------------------------------------- higher rank

def test_a_rank_4_source_with_split_1_expands_rows_only():
    source = _source((4, 3, 2, 2), 3)
    rows = torch.tensor([0, 1, 2, 3, 0, 2])
    row_scale = torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0, 0.5])
    plan = TensorPlan(name="conv", source="conv", source_shape=(4, 3, 2, 2), shape=(6, 3, 2, 2),
                      split=1, axes=(Axis(rows, row_scale), Axis(torch.arange(12))))
    out = execute(plan, source)
    assert out.shape == (6, 3, 2, 2)
    expected = source[rows] * row_scale.float()[:, None, None, None]
    assert torch.equal(out, expected)
    check(plan, source, out)


def test_a_rank_4_source_with_noise_on_rows_matches_the_oracle():
    source = _source((4, 3, 2, 2), 4)
    rows = torch.tensor([0, 1, 2, 3, 0, 1, ZERO])
    plan = TensorPlan(name="conv", source="conv", source_shape=(4, 3, 2, 2), shape=(7, 3, 2, 2),
                      split=1, axes=(Axis(rows), Axis(torch.arange(12))), noise_axis=0,
                      noise_std=0.1, noise_key=tensor_key(2, "conv"))
    out = execute(plan, source)
    assert out.shape == (7, 3, 2, 2)
    check(plan, source, out)


def test_a_rank_4_source_with_noise_on_the_flattened_fan_in_matches_the_oracle():
    source = _source((4, 3, 2, 2), 5)
    cols = torch.tensor([c % 12 for c in range(20)] + [ZERO, ZERO, ZERO, ZERO])  # in 3 -> 6 (2x2 kernel)
    rows = torch.tensor([0, 1, 2, 3, 1])
    plan = TensorPlan(name="conv2", source="conv2", source_shape=(4, 3, 2, 2), shape=(5, 6, 2, 2),
                      split=1, axes=(Axis(rows), Axis(cols, _split_scale(cols))), noise_axis=1,
                      noise_std=0.1, noise_key=tensor_key(2, "conv2"))
    out = execute(plan, source)
    assert out.shape == (5, 6, 2, 2)
    check(plan, source, out)
    assert torch.equal(out[1], out[4])  # a replica on the other axis


def test_a_1x1x5_vector_with_split_2_expands_its_last_dim():
    source = torch.tensor([[[1.0, -2.0, 3.0, 0.5, 4.0]]])
    cols = torch.tensor([0, 1, 2, 3, 4, MEAN, MEAN, ZERO])
    plan = TensorPlan(name="cls", source="cls", source_shape=(1, 1, 5), shape=(1, 1, 8), split=2,
                      axes=(Axis(torch.tensor([0])), Axis(cols)))
    assert plan.view_shape == (1, 8)
    out = execute(plan, source)
    assert out.shape == (1, 1, 8)
    mean = source.mean().item()
    assert out.flatten().tolist() == pytest.approx([1.0, -2.0, 3.0, 0.5, 4.0, mean, mean, 0.0], abs=1e-7)
    assert out[0, 0, 7].item() == 0.0
    check(plan, source, out)


# ---------------------------------------------------------------- low precision

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("noise_axis", [None, 0, 1])
def test_half_precision_is_fp32_arithmetic_rounded_once(dtype, noise_axis):
    plan, source = random_plan(500 + (noise_axis or 0), 33, 33, noise_axis)
    low = source.to(dtype)
    out = execute(plan, low)
    assert out.dtype == dtype and out.shape == plan.shape
    reference32 = execute(plan, low.float())
    assert reference32.dtype == torch.float32
    assert torch.equal(out, reference32.to(dtype))
    assert (out != 0).any()
    check(plan, low, out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_chunks_written_by_two_threads_keep_each_others_values(dtype, monkeypatch):
    """Noise on the rows: the chunks walk the columns in class order, so replicated columns are
    scattered (not copied as a run) into the one output by two worker threads. torch's scatter_
    on fp16/bf16 CPU tensors lost other threads' writes (zeros); the result must be the
    single-threaded one and fp32's rounded once."""
    from lemon import maps

    rows, cols = maps.circular(50, 20), maps.circular(300, 70)
    plan = TensorPlan(name="h.weight", source="h.weight", source_shape=(20, 70), shape=(50, 300), split=1,
                      axes=(Axis(rows, maps.split_scale(rows)), Axis(cols)), noise_axis=0, noise_std=0.02,
                      noise_key=tensor_key(3, "h.weight"))
    source = (torch.randn(20, 70, generator=torch.Generator().manual_seed(3)) + 2.0).to(dtype)
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 500)  # 10 columns a chunk: 30 chunks
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = execute(plan, source)
        torch.set_num_threads(2)
        for _ in range(3):
            assert torch.equal(execute(plan, source), alone)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, execute(plan, source.float()).to(dtype))
    assert (alone != 0).all()


# ---------------------------------------------------------------- axes and masks

def test_new_mask_marks_later_replicas_and_specials_as_new():
    rows = torch.tensor([0, 1, 0, ZERO, MEAN, 1, ONE])
    cols = torch.tensor([2, 0, 2, 1])
    plan = TensorPlan(name="m", source="m", source_shape=(2, 3), shape=(7, 4), split=1,
                      axes=(Axis(rows), Axis(cols)))
    row_new = torch.tensor([False, False, True, True, True, True, True])
    col_new = torch.tensor([False, False, True, False])
    assert torch.equal(plan.axes[0].is_new(), row_new)
    assert torch.equal(plan.axes[1].is_new(), col_new)
    mask = plan.new_mask()
    assert mask.dtype == torch.bool and mask.shape == (7, 4)
    assert torch.equal(mask, row_new[:, None] | col_new[None, :])
    assert mask[0].tolist() == [False, False, True, False]
    assert mask[1].tolist() == [False, False, True, False]
    assert mask[2:].all()


def test_new_mask_of_an_inserted_layer_is_all_new():
    plan = TensorPlan(name="m", source="m", source_shape=(2, 3), shape=(2, 3), split=1,
                      axes=(Axis(torch.arange(2)), Axis(torch.arange(3))), inserted=True)
    assert plan.new_mask().all() and plan.new_mask().shape == (2, 3)
    same = TensorPlan(name="m", source="m", source_shape=(2, 3), shape=(2, 3), split=1,
                      axes=(Axis(torch.arange(2)), Axis(torch.arange(3))))
    assert not same.new_mask().any()


def test_new_mask_has_the_stored_shape_of_a_higher_rank_tensor():
    plan = TensorPlan(name="c", source="c", source_shape=(2, 3, 2), shape=(3, 3, 2), split=1,
                      axes=(Axis(torch.tensor([0, 1, 0])), Axis(torch.arange(6))))
    mask = plan.new_mask()
    assert mask.shape == (3, 3, 2)
    assert not mask[:2].any() and mask[2].all()


def test_next_replica_on_a_small_hand_example():
    axis = Axis(torch.tensor([2, 0, 2, ZERO, 0, 2, MEAN, 5]))
    # source 2: 0 -> 2 -> 5 -> 0; source 0: 1 -> 4 -> 1; source 5 alone: itself; specials: -1
    assert axis.next_replica.tolist() == [2, 4, 5, -1, 1, 0, -1, 7]


@pytest.mark.parametrize("n", [1, 7, 33, 200])
def test_next_replica_matches_the_definition_on_random_maps(n):
    rng = random.Random(n)
    source = _random_map(rng, n, rng.choice([1, 3, 5, 40]), (ZERO, MEAN, ONE))
    assert Axis(source).next_replica.tolist() == _next_replica(source.tolist())


def test_next_replica_of_an_axis_without_sources_is_all_minus_one():
    assert Axis(torch.tensor([ZERO, MEAN, ONE])).next_replica.tolist() == [-1, -1, -1]


def test_extended_indices_put_mean_one_zero_after_the_sources():
    axis = Axis(torch.tensor([2, 0, ZERO, MEAN, ONE, 4]))
    assert axis.extended(5).tolist() == [2, 0, 7, 5, 6, 4]
    assert axis.source.tolist() == [2, 0, ZERO, MEAN, ONE, 4]  # not modified in place
    assert [_class(s, 5) for s in axis.source.tolist()] == axis.extended(5).tolist()


def test_axis_keeps_its_scale_in_float64():
    axis = Axis(torch.arange(3), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32))
    assert axis.scale.dtype == torch.float64
    exact = Axis(torch.arange(3), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    assert exact.scale.tolist() == [0.1, 0.2, 0.3]


def test_axis_rejects_a_scale_of_the_wrong_length():
    with pytest.raises(ValueError):
        Axis(torch.arange(3), torch.ones(2))
    with pytest.raises(ValueError):
        TensorPlan(name="x", source="x", source_shape=(2, 2), shape=(3, 2), split=1,
                   axes=(Axis(torch.arange(2)), Axis(torch.arange(2))))


def test_a_plan_with_mean_or_one_on_the_noise_axis_is_refused():
    for special in (MEAN, ONE):
        with pytest.raises(ValueError, match="noise axis"):
            TensorPlan(name="w", source="w", source_shape=(2, 2), shape=(3, 2), split=1,
                       axes=(Axis(torch.tensor([0, 1, special])), Axis(torch.arange(2))),
                       noise_axis=0, noise_std=0.02)


# ---------------------------------------------------------------- the MEAN side input

@pytest.mark.parametrize("n", [1, 2, 7, 33, 1000])
def test_mean_along_is_the_fixed_pairwise_tree_on_any_thread_count_and_block_size(n, monkeypatch):
    from lemon.plan import mean_along

    x = (torch.randn(n, 5, generator=torch.Generator().manual_seed(n)) * 10.0 ** torch.arange(5)).float()
    want = [_tree_mean(col) for col in x.double().T.tolist()]
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            assert mean_along(x, 0).tolist() == want
            assert mean_along(x.T.contiguous(), 1).tolist() == want
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(mean_along(x, 0), x.double().mean(0), rtol=1e-12, atol=0)
