"""Index maps (lemon.maps): vector expansions, head assignments, split scales, layer plans."""
from __future__ import annotations

import math

import pytest
import torch

from lemon import maps
from lemon.plan import MEAN, ONE, ZERO


def _materialize(index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a vector map by hand: sourced -> x[i], ZERO -> 0, MEAN -> mean(x)."""
    out = []
    for i in index.tolist():
        if i >= 0:
            out.append(x[i])
        elif i == ZERO:
            out.append(torch.zeros((), dtype=x.dtype))
        elif i == MEAN:
            out.append(x.mean())
        else:
            raise AssertionError(f"unexpected special {i} in a stream map")
    return torch.stack(out)


SIZES = [(4, 8), (4, 10), (3, 3), (3, 7), (5, 6), (1, 4), (7, 20)]


@pytest.mark.parametrize("n_s,n_t", SIZES)
def test_stream_zero_is_k_copies_then_zeros(n_s, n_t):
    x = torch.randn(n_s, dtype=torch.float64, generator=torch.Generator().manual_seed(n_s * 100 + n_t))
    k, r = divmod(n_t, n_s)
    got = _materialize(maps.stream(n_s, n_t, "zero"), x)
    assert torch.equal(got, torch.cat([x] * k + [torch.zeros(r, dtype=x.dtype)]))


@pytest.mark.parametrize("n_s,n_t", SIZES)
def test_stream_circ_is_k_copies_then_the_first_r_entries(n_s, n_t):
    x = torch.randn(n_s, dtype=torch.float64, generator=torch.Generator().manual_seed(n_s * 100 + n_t))
    k, r = divmod(n_t, n_s)
    got = _materialize(maps.stream(n_s, n_t, "circ"), x)
    assert torch.equal(got, torch.cat([x] * k + [x[:r]]))
    assert torch.equal(maps.stream(n_s, n_t, "circ"), torch.arange(n_t) % n_s)


@pytest.mark.parametrize("n_s,n_t", SIZES)
def test_stream_avg_is_k_copies_then_the_mean_keeping_mean_and_scaling_variance_by_eta_squared(n_s, n_t):
    x = torch.randn(n_s, dtype=torch.float64, generator=torch.Generator().manual_seed(n_s * 100 + n_t)) + 0.3
    k, r = divmod(n_t, n_s)
    got = _materialize(maps.stream(n_s, n_t, "avg"), x)
    assert torch.equal(got, torch.cat([x] * k + [x.mean().expand(r)]))
    assert got.mean().item() == pytest.approx(x.mean().item(), abs=1e-12)
    eta = maps.eta(n_s, n_t)
    assert eta == pytest.approx(math.sqrt(k * n_s / n_t))
    assert got.var(unbiased=False).item() == pytest.approx(eta**2 * x.var(unbiased=False).item(),
                                                          rel=1e-12, abs=1e-14)


def test_stream_maps_have_the_documented_layout():
    assert maps.stream(4, 10, "zero").tolist() == [0, 1, 2, 3, 0, 1, 2, 3, ZERO, ZERO]
    assert maps.stream(4, 10, "avg").tolist() == [0, 1, 2, 3, 0, 1, 2, 3, MEAN, MEAN]
    assert maps.stream(4, 10, "circ").tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    for form in maps.STREAM_FORMS:
        assert maps.stream(3, 3, form).tolist() == [0, 1, 2]  # identity: no residue
    assert maps.eta(4, 8) == 1.0 and maps.eta(3, 3) == 1.0
    assert maps.eta(4, 10) == pytest.approx(math.sqrt(0.8))


def test_stream_rejects_an_unknown_form():
    with pytest.raises(ValueError, match="unknown stream form"):
        maps.stream(4, 8, "bogus")


# ---------------------------------------------------------------- attention heads

def _growing_head_combos():
    """All (H_S, KV_S, H_T, KV_T) with 1 <= KV_S <= H_S <= 16, KV_S | H_S,
    H_S <= H_T <= 16, KV_S <= KV_T <= H_T, KV_T | H_T. The identity (H_T, KV_T) ==
    (H_S, KV_S) is *included* (50 of them, all feasible)."""
    combos = []
    for h_s in range(1, 17):
        for kv_s in range(1, h_s + 1):
            if h_s % kv_s:
                continue
            for h_t in range(h_s, 17):
                for kv_t in range(kv_s, h_t + 1):
                    if h_t % kv_t == 0:
                        combos.append((h_s, kv_s, h_t, kv_t))
    return combos


COMBOS = _growing_head_combos()


def _condition(h_s, kv_s, h_t, kv_t) -> bool:
    return kv_t >= kv_s * math.ceil((h_s // kv_s) / (h_t // kv_t))


def test_gqa_feasibility_is_kv_t_at_least_kv_s_times_ceil_of_group_ratio():
    # With the identity case included there are 914 combinations, 18 infeasible (as the
    # design doc says); without it, 864 of which the same 18 fail. The counts below are
    # derived from the enumeration in _growing_head_combos and agree with the doc.
    infeasible = [c for c in COMBOS if not _condition(*c)]
    assert len(COMBOS) == 914
    assert len(infeasible) == 18
    assert len([c for c in COMBOS if (c[0], c[1]) != (c[2], c[3])]) == 864
    assert all((c[0], c[1]) != (c[2], c[3]) for c in infeasible)
    for combo in COMBOS:
        assert maps.gqa_feasible(*combo) == _condition(*combo), combo
    # a few cases by hand
    assert not maps.gqa_feasible(6, 2, 6, 3)   # g 3 -> 2: each KV head needs 2 copies, 3 < 4
    assert maps.gqa_feasible(6, 2, 12, 4)      # g 3 -> 3
    assert maps.gqa_feasible(8, 2, 8, 4)       # g 4 -> 2: 4 >= 2 * 2
    assert not maps.gqa_feasible(12, 4, 12, 6)  # g 3 -> 2: 6 < 4 * 2


def test_infeasible_head_combinations_raise_a_value_error_naming_the_condition():
    infeasible = [c for c in COMBOS if not _condition(*c)]
    assert infeasible
    for combo in infeasible:
        for twins in (False, True):
            with pytest.raises(ValueError, match="KV_T >= KV_S"):
                maps.attention_heads(*combo, twins=twins)


def test_feasible_head_maps_cover_every_source_head_and_keep_each_query_with_its_kv_head():
    feasible = [c for c in COMBOS if _condition(*c)]
    assert len(feasible) == len(COMBOS) - 18
    for h_s, kv_s, h_t, kv_t in feasible:
        q, kv = maps.attention_heads(h_s, kv_s, h_t, kv_t)
        g_s, g_t = h_s // kv_s, h_t // kv_t
        where = (h_s, kv_s, h_t, kv_t)
        assert q.dtype == torch.int64 and kv.dtype == torch.int64
        assert q.shape == (h_t,) and kv.shape == (kv_t,), where
        assert int(q.min()) >= 0 and int(q.max()) < h_s, where
        assert int(kv.min()) >= 0 and int(kv.max()) < kv_s, where
        assert set(q.tolist()) == set(range(h_s)), where
        assert set(kv.tolist()) == set(range(kv_s)), where
        j = torch.arange(h_t)
        assert torch.equal(q // g_s, kv[j // g_t]), where


def test_head_maps_are_circular_when_the_group_size_is_kept():
    cases = [c for c in COMBOS if c[0] // c[1] == c[2] // c[3]]
    assert (8, 2, 16, 4) in cases and (4, 4, 8, 8) in cases and (4, 4, 7, 7) in cases
    for h_s, kv_s, h_t, kv_t in cases:
        q, kv = maps.attention_heads(h_s, kv_s, h_t, kv_t)
        assert torch.equal(q, torch.arange(h_t) % h_s), (h_s, kv_s, h_t, kv_t)
        assert torch.equal(kv, torch.arange(kv_t) % kv_s), (h_s, kv_s, h_t, kv_t)
    q, kv = maps.attention_heads(8, 2, 16, 4)
    assert q.tolist() == [0, 1, 2, 3, 4, 5, 6, 7] * 2 and kv.tolist() == [0, 1, 0, 1]


def test_head_maps_when_the_group_shrinks():
    # 8 heads / 2 KV -> 8 / 4: g 4 -> 2; KV head c = 0 gets copies 0 and 2
    q, kv = maps.attention_heads(8, 2, 8, 4)
    assert kv.tolist() == [0, 1, 0, 1]
    assert q.tolist() == [0, 1, 4, 5, 2, 3, 6, 7]


def test_twin_head_maps_stay_consistent_for_every_feasible_combination():
    for combo in (c for c in COMBOS if _condition(*c)):
        h_s, kv_s, h_t, kv_t = combo
        q, kv = maps.attention_heads(*combo, twins=True)
        assert q.shape == (h_t,) and kv.shape == (kv_t,), combo
        assert 0 <= int(q.min()) and int(q.max()) < h_s, combo
        assert 0 <= int(kv.min()) and int(kv.max()) < kv_s, combo
        assert torch.equal(q // (h_s // kv_s), kv[torch.arange(h_t) // (h_t // kv_t)]), combo


@pytest.mark.parametrize("combo", [(4, 4, 4, 4), (8, 2, 8, 2), (4, 4, 8, 8), (8, 2, 16, 4), (6, 6, 9, 9)])
def test_twin_head_maps_give_every_used_query_head_a_twin(combo):
    q, kv = maps.attention_heads(*combo, twins=True)
    counts = torch.bincount(q)
    used = counts[counts > 0]
    assert used.numel() > 0
    assert int(used.min()) >= 2, (combo, q.tolist())
    if combo[2] == combo[3]:  # MHA: a query head's twin comes with a KV twin
        kv_counts = torch.bincount(kv)
        assert int(kv_counts[kv_counts > 0].min()) >= 2, (combo, kv.tolist())


def test_twin_period_allows_two_copies_where_the_target_allows():
    assert maps.twin_period(4, 8) == 4
    assert maps.twin_period(4, 6) == 3
    assert maps.twin_period(4, 4) == 2
    assert maps.twin_period(4, 1) == 1
    assert maps.twin_period(1, 5) == 1


def test_blocks_expand_unit_maps_to_contiguous_element_maps():
    assert maps.blocks(torch.tensor([2, 0]), 3).tolist() == [6, 7, 8, 0, 1, 2]
    assert maps.circular(5, 2).tolist() == [0, 1, 0, 1, 0]


# ---------------------------------------------------------------- split_scale

def test_split_scale_gives_each_replica_one_over_its_count_and_zero_to_specials():
    index = torch.tensor([0, 1, 0, ZERO, 2, 0, MEAN, 1, ONE])
    scale = maps.split_scale(index)
    assert scale.dtype == torch.float64  # exact enough for fp64 models; executors round once
    expected = torch.tensor([1 / 3, 1 / 2, 1 / 3, 0, 1, 1 / 3, 0, 1 / 2, 0], dtype=torch.float64)
    assert torch.equal(scale, expected)


@pytest.mark.parametrize("n_s,n_t,form", [(4, 10, "zero"), (3, 3, "zero"), (5, 17, "circ"), (4, 8, "avg")])
def test_split_scales_of_the_replicas_of_each_source_sum_to_one(n_s, n_t, form):
    index = maps.stream(n_s, n_t, form)
    scale = maps.split_scale(index).double()
    sourced = index >= 0
    sums = torch.zeros(n_s, dtype=torch.float64).index_add_(0, index[sourced], scale[sourced])
    assert torch.allclose(sums, torch.ones(n_s, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.all(scale[~sourced] == 0)


def test_split_scale_of_only_specials_is_all_zero():
    assert torch.equal(maps.split_scale(torch.tensor([ZERO, ZERO])), torch.zeros(2))


# ---------------------------------------------------------------- layers

def test_default_2x_depth_interleaves_each_layer_with_its_copy():
    assert maps.layers(4, 8, None) == [(0, False), (0, True), (1, False), (1, True),
                                       (2, False), (2, True), (3, False), (3, True)]


def test_default_12_to_18_inserts_one_layer_after_every_other_layer():
    plan = maps.layers(12, 18, None)
    assert len(plan) == 18
    inserted_after = [plan[t - 1][0] for t, (_, ins) in enumerate(plan) if ins]
    assert len(inserted_after) == 6 and len(set(inserted_after)) == 6  # after 6 distinct layers
    assert [s for s, ins in plan if not ins] == list(range(12))
    assert inserted_after == [1, 3, 5, 7, 9, 11]  # spread evenly, later layers first


def test_same_depth_is_the_identity():
    assert maps.layers(5, 5, None) == [(i, False) for i in range(5)]


@pytest.mark.parametrize("n_s,n_t", [(2, 7), (1, 4), (3, 4), (5, 13), (6, 6), (4, 12), (7, 9)])
def test_default_layer_plan_keeps_every_source_layer_once_in_order_and_copies_follow_their_source(n_s, n_t):
    plan = maps.layers(n_s, n_t, None)
    assert len(plan) == n_t
    assert [s for s, ins in plan if not ins] == list(range(n_s))
    assert sum(ins for _, ins in plan) == n_t - n_s
    assert plan[0] == (0, False)
    for t in range(1, n_t):
        if plan[t][1]:
            assert plan[t][0] == plan[t - 1][0]  # made from the layer just before it
    per_source = [sum(1 for s, ins in plan if ins and s == l) for l in range(n_s)]
    assert max(per_source) - min(per_source) <= 1  # spread as evenly as possible


def test_2_to_7_goes_beyond_2x():
    assert maps.layers(2, 7, None) == [(0, False), (0, True), (0, True),
                                       (1, False), (1, True), (1, True), (1, True)]


def test_explicit_layer_positions():
    assert maps.layers(2, 4, [1, 3]) == [(0, False), (0, True), (1, False), (1, True)]
    assert maps.layers(3, 4, [3]) == [(0, False), (1, False), (2, False), (2, True)]
    assert maps.layers(3, 5, [1, 2]) == [(0, False), (0, True), (0, True), (1, False), (2, False)]
