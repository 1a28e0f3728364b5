"""The reference executor (lemon.reference.execute) against an independent, slow oracle.

The oracle below implements the formula of lemon/plan.py's module docstring literally,
element by element, in plain Python (double precision) with the Python noise spec:

    out[i, j] = S~[row[i], col[j]] * row_scale[i] * col_scale[j] + noise(i, j)

specials ZERO > ONE > MEAN; on the noise axis, sourced indices get R minus the mean of R
over their replica group (accumulated in ascending index order), ZERO indices get R; no
noise where the other axis index is ZERO. R(i, j) = std * z(key, i * n_cols + j).

A noise axis holds source indices and ZERO only (a plan with MEAN or ONE there is refused),
so the random plans here keep MEAN/ONE on the other axis.
"""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from lemon import reference
from lemon.noise import standard_noise_int, tensor_key
from lemon.plan import MEAN, ONE, ZERO, Axis, TensorPlan
from lemon.reference import execute


# ---------------------------------------------------------------- the oracle

def oracle(plan: TensorPlan, source: torch.Tensor) -> list[list[float]]:
    """The whole output view, as nested Python lists of floats (window ignored)."""
    n_src_rows, n_src_cols = plan.source_view_shape
    S = source.reshape(n_src_rows, n_src_cols).double().tolist()
    n_rows, n_cols = plan.view_shape
    row_src, col_src = plan.axes[0].source.tolist(), plan.axes[1].source.tolist()
    row_scale = plan.axes[0].scale.tolist() if plan.axes[0].scale is not None else [1.0] * n_rows
    col_scale = plan.axes[1].scale.tolist() if plan.axes[1].scale is not None else [1.0] * n_cols

    def col_mean(c):  # mean of S along axis 0, for column c
        return sum(S[r][c] for r in range(n_src_rows)) / n_src_rows

    def row_mean(r):  # mean of S along axis 1, for row r
        return sum(S[r][c] for c in range(n_src_cols)) / n_src_cols

    def base(r, c):
        if r == ZERO or c == ZERO:
            return 0.0
        if r == ONE or c == ONE:
            return 1.0
        if r == MEAN and c == MEAN:
            return sum(sum(row) for row in S) / (n_src_rows * n_src_cols)
        if r == MEAN:
            return col_mean(c)
        if c == MEAN:
            return row_mean(r)
        return S[r][c]

    out = [[base(row_src[i], col_src[j]) * row_scale[i] * col_scale[j] for j in range(n_cols)]
           for i in range(n_rows)]
    if plan.noise_axis is None or plan.noise_std == 0.0:
        return out

    def R(i, j):
        return plan.noise_std * standard_noise_int(plan.noise_key, i * n_cols + j)

    axis = plan.noise_axis
    along_src = row_src if axis == 0 else col_src
    other_src = col_src if axis == 0 else row_src
    for t, s in enumerate(along_src):
        assert s >= 0 or s == ZERO, "the oracle only knows sourced or ZERO indices on the noise axis"
        group = [u for u in range(len(along_src)) if along_src[u] == s]  # ascending
        for o, other in enumerate(other_src):
            if other == ZERO:
                continue
            at = (lambda a: (a, o)) if axis == 0 else (lambda a: (o, a))
            if s == ZERO:
                noise = R(*at(t))
            else:
                total = 0.0
                for u in group:
                    total += R(*at(u))
                noise = R(*at(t)) - total / len(group)
            i, j = at(t)
            out[i][j] += noise
    return out


def assert_close(got: torch.Tensor, want, rel: float = 1e-6):
    want = torch.tensor(want, dtype=torch.float64).reshape(got.shape)
    scale = want.abs().max().item()
    assert scale > 0, "degenerate case: everything is zero"
    diff = (got.double() - want).abs().max().item()
    assert diff <= rel * scale, f"max abs diff {diff:g} > {rel:g} * {scale:g}"


# ---------------------------------------------------------------- random plans

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
    if rng.random() < 0.3:
        return None
    return torch.tensor([rng.uniform(-1.5, 1.5) for _ in range(n)], dtype=torch.float32)


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
    source = torch.randn(n_src_rows, n_src_cols, generator=torch.Generator().manual_seed(seed)) + 0.25
    return plan, source


SHAPES = list(itertools.product([1, 7, 33], [1, 7, 33]))


@pytest.mark.parametrize("noise_axis", [None, 0, 1])
@pytest.mark.parametrize("n_rows,n_cols", SHAPES)
def test_execute_matches_the_elementwise_oracle_on_random_plans(n_rows, n_cols, noise_axis):
    checked = 0
    for rep in range(2):
        seed = 1000 * n_rows + 10 * n_cols + rep + (0 if noise_axis is None else 100_000 * (noise_axis + 1))
        plan, source = random_plan(seed, n_rows, n_cols, noise_axis)
        got = execute(plan, source)
        assert got.shape == plan.shape and got.dtype == torch.float32
        want = oracle(plan, source)
        if all(v == 0 for row in want for v in row):
            continue  # e.g. a single ZERO row; the other repetition checks a real case
        assert_close(got, want)
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
    assert_close(got, oracle(plan, source))
    view = got if noise_axis == 0 else got.T
    assert torch.all(view[:, 4] == 0)  # the other axis is ZERO there: no noise, exactly 0
    assert torch.all(view[6:, [0, 1, 2, 3, 5, 6]] != 0)  # free noise on ZERO noise-axis indices


def test_execute_matches_the_oracle_in_fp64_to_double_precision():
    plan, source = random_plan(7, 33, 7, 1)
    got = execute(plan, source.double())
    assert got.dtype == torch.float64
    assert_close(got, oracle(plan, source.double()), rel=1e-12)


@pytest.mark.parametrize("noise_axis", [None, 0, 1])
def test_execute_writes_every_element_of_a_nan_poisoned_out(noise_axis):
    plan, source = random_plan(31, 33, 7, noise_axis)
    out = torch.full(plan.shape, float("nan"))
    result = execute(plan, source, out=out)
    assert result is out
    assert not torch.isnan(out).any()
    assert torch.equal(out, execute(plan, source))
    # and a restricted plan writing into a poisoned block
    block_plan = plan.restrict(1, 2, 6)
    block = torch.full((33, 4), float("nan"))
    execute(block_plan, source, out=block)
    assert not torch.isnan(block).any()


@pytest.mark.parametrize("noise_axis", [0, 1])
def test_execute_is_independent_of_the_chunk_size(monkeypatch, noise_axis):
    plan, source = random_plan(77, 33, 33, noise_axis)
    whole = execute(plan, source)
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 40)  # chunks of 1 or 2 lines
    assert torch.equal(execute(plan, source), whole)
    assert torch.equal(execute(plan.restrict(1 - noise_axis, 3, 30), source),
                       whole.reshape(plan.view_shape)[3:30] if noise_axis == 1
                       else whole.reshape(plan.view_shape)[:, 3:30])


def test_execute_rejects_a_source_of_the_wrong_shape():
    plan, source = random_plan(3, 7, 7, None, n_src_rows=3, n_src_cols=2)
    with pytest.raises(ValueError, match="expects"):
        execute(plan, torch.zeros(2, 3))


# ---------------------------------------------------------------- zero-sum

@pytest.mark.parametrize("split_axis", [0, 1])
@pytest.mark.parametrize("n_src,n_out", [(3, 8), (5, 5), (4, 12), (7, 33)])
def test_replicas_of_a_split_axis_sum_to_the_source_even_with_noise(split_axis, n_src, n_out):
    from lemon.maps import circular, split_scale

    split_map = circular(n_out, n_src)
    other = 6
    plan = plan_with_noise_on(split_axis, Axis(split_map, split_scale(split_map)), Axis(torch.arange(other)),
                              n_src, other, name="split", std=0.5, seed=1)
    src_shape = list(plan.source_shape)
    source = torch.randn(*src_shape, generator=torch.Generator().manual_seed(n_out))
    out = execute(plan, source).double()
    summed = torch.zeros(src_shape, dtype=torch.float64)
    summed.index_add_(split_axis, split_map, out)
    assert torch.allclose(summed, source.double(), rtol=0, atol=1e-6)
    if n_out > n_src:  # the noise really is there: replicas differ from plain 1/n copies
        plain = source.double().index_select(split_axis, split_map) * (
            split_scale(split_map).double()[:, None] if split_axis == 0 else split_scale(split_map).double()[None, :])
        assert (out - plain).abs().max().item() > 1e-2


def test_a_group_of_one_gets_exactly_zero_noise():
    plan = TensorPlan(name="g1", source="g1", source_shape=(3, 4), shape=(3, 4), split=1,
                      axes=(Axis(torch.arange(3)), Axis(torch.arange(4))), noise_axis=0,
                      noise_std=1.0, noise_key=tensor_key(0, "g1"))
    source = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(execute(plan, source), source)


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
                      axes=(Axis(rows, torch.rand(len(rows), generator=rng) + 0.5), Axis(cols)),
                      noise_axis=noise_axis, noise_std=0.2, noise_key=tensor_key(9, "r"))
    return plan, torch.randn(n_src_rows, n_src_cols, generator=rng)


@pytest.mark.parametrize("noise_axis", [0, 1])
@pytest.mark.parametrize("axis", [0, 1])
def test_a_restricted_plan_gives_exactly_the_slice_of_the_whole_output(noise_axis, axis):
    plan, source = _restrict_plan(noise_axis)
    whole = execute(plan, source)
    assert (whole != 0).any()
    length = plan.view_shape[axis]
    for start, stop in [(0, length), (0, 1), (3, 17 if length > 17 else length - 1), (length - 1, length),
                        (2, 2), (1, length - 1)]:
        part = execute(plan.restrict(axis, start, stop), source)
        expected = whole[start:stop] if axis == 0 else whole[:, start:stop]
        assert part.shape == expected.shape
        assert torch.equal(part, expected), (start, stop)


@pytest.mark.parametrize("noise_axis", [0, 1])
def test_nested_restrictions_compose_to_a_2d_block(noise_axis):
    plan, source = _restrict_plan(noise_axis)
    whole = execute(plan, source)
    block = plan.restrict(0, 2, 11).restrict(1, 1, 8).restrict(0, 3, 7)  # rows 5..9, cols 1..8
    assert block.block == ((5, 9), (1, 8))
    assert torch.equal(execute(block, source), whole[5:9, 1:8])


def test_restrict_rejects_a_block_outside_the_window():
    plan, _ = _restrict_plan(0)
    with pytest.raises(ValueError):
        plan.restrict(0, 3, 100)
    with pytest.raises(ValueError):
        plan.restrict(1, 0, 5).restrict(1, 2, 6)


# ---------------------------------------------------------------- higher rank

def test_a_rank_4_source_with_split_1_expands_rows_only():
    source = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    rows = torch.tensor([0, 1, 2, 3, 0, 2])
    row_scale = torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0, 0.5])
    plan = TensorPlan(name="conv", source="conv", source_shape=(4, 3, 2, 2), shape=(6, 3, 2, 2),
                      split=1, axes=(Axis(rows, row_scale), Axis(torch.arange(12))))
    out = execute(plan, source)
    assert out.shape == (6, 3, 2, 2)
    expected = source[rows] * row_scale[:, None, None, None]
    assert torch.equal(out, expected)
    assert_close(out, oracle(plan, source))


def test_a_rank_4_source_with_noise_on_rows_matches_the_oracle():
    source = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(4))
    rows = torch.tensor([0, 1, 2, 3, 0, 1, ZERO])
    plan = TensorPlan(name="conv", source="conv", source_shape=(4, 3, 2, 2), shape=(7, 3, 2, 2),
                      split=1, axes=(Axis(rows), Axis(torch.arange(12))), noise_axis=0,
                      noise_std=0.1, noise_key=tensor_key(2, "conv"))
    out = execute(plan, source)
    assert out.shape == (7, 3, 2, 2)
    assert_close(out, oracle(plan, source))


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


# ---------------------------------------------------------------- new_mask / replica groups

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


def test_replica_groups_on_a_small_hand_example():
    axis = Axis(torch.tensor([2, 0, 2, ZERO, 0, 2, MEAN, 5]))
    group_of, members = axis.replica_groups
    # groups in ascending source order: source 0 -> group 0, source 2 -> group 1, source 5 -> group 2
    assert group_of.tolist() == [1, 0, 1, -1, 0, 1, -1, 2]
    assert members.tolist() == [[1, 4, -1], [0, 2, 5], [7, -1, -1]]


def test_replica_groups_of_an_axis_without_sources_are_empty():
    group_of, members = Axis(torch.tensor([ZERO, MEAN, ONE])).replica_groups
    assert group_of.tolist() == [-1, -1, -1]
    assert members.shape[0] == 0


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
