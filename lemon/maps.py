"""Index maps: which source unit every unit of the target comes from.

These are LEMON's vector expansions and unit assignments as int64 maps (special
values from :mod:`lemon.plan`); the rules turn them into tensor plans.
Notation: source width ``n_source``, target width ``n_target``,
``k = n_target // n_source``, ``r = n_target % n_source``.
"""
from __future__ import annotations

import math

import torch

from .plan import MEAN, ZERO

STREAM_FORMS = ("avg", "zero", "circ")


def stream(n_source: int, n_target: int, form: str) -> torch.Tensor:
    """A hidden vector x of width n_source as k copies plus r residue entries:

    * ``zero`` — V_zero(x) = [x; ...; x; 0_r]
    * ``avg``  — V_avg(x)  = [x; ...; x; mean(x) 1_r]  (mean kept; variance * eta^2)
    * ``circ`` — V_circ(x) = [x; ...; x; x[:r]]
    """
    if form not in STREAM_FORMS:
        raise ValueError(f"unknown stream form {form!r}; expected one of {STREAM_FORMS}")
    index = torch.arange(n_target) % n_source
    residue = torch.arange(n_target) >= (n_target // n_source) * n_source
    if form == "zero":
        index[residue] = ZERO
    elif form == "avg":
        index[residue] = MEAN
    return index


def eta(n_source: int, n_target: int) -> float:
    """sqrt(k n_source / n_target): the factor V_avg shrinks the standard deviation by."""
    return math.sqrt((n_target // n_source) * n_source / n_target)


def circular(n_target: int, period: int) -> torch.Tensor:
    """Unit j copies source unit j mod period."""
    return torch.arange(n_target) % period


def twin_period(n_source: int, n_target: int) -> int:
    """Period of the unit map of an *inserted* layer: every used source unit gets at least
    two copies where n_target allows, so cancel-zero output weights (R and -R) are non-zero."""
    return max(1, min(n_source, n_target // 2))


def blocks(unit_map: torch.Tensor, block: int) -> torch.Tensor:
    """Element map of units that are contiguous blocks (attention heads of head_dim)."""
    return (unit_map[:, None] * block + torch.arange(block)).flatten()


def split_scale(index: torch.Tensor) -> torch.Tensor:
    """1 / (number of replicas) for every sourced index: replicas of a fan-in weight sum to it."""
    scale = torch.zeros(index.numel(), dtype=torch.float64)
    sourced = index >= 0
    _, inverse, counts = torch.unique(index[sourced], return_inverse=True, return_counts=True)
    scale[sourced] = 1.0 / counts[inverse].to(torch.float64)
    return scale


def gqa_feasible(heads: int, kv_heads: int, target_heads: int, target_kv_heads: int) -> bool:
    """Each source KV group needs enough KV copies to host all of its query heads."""
    group, target_group = heads // kv_heads, target_heads // target_kv_heads
    return target_kv_heads >= kv_heads * math.ceil(group / target_group)


def attention_heads(heads: int, kv_heads: int, target_heads: int, target_kv_heads: int,
                    twins: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(query head map s, KV head map sigma) for grouped-query attention.

    Query head j attends with KV head j // g (groups contiguous). The maps are chosen
    together so that ``s(j) // g_source == sigma(j // g_target)``: every new query head
    attends with a copy of its own original KV head, hence computes a copy of an
    original head's output. sigma is circular (each source KV head gets at least
    floor(KV_T / KV_S) >= ceil(g_S / g_T) copies when feasible); the query heads served
    by copies of source KV head c take c's query heads in turn, so every source head
    keeps a copy. With the group size kept this is the plain circular map; multi-head
    attention is the case g = 1.

    ``twins`` builds the map of an inserted layer instead, where covering every source
    head does not matter but every used head should have a twin (see ``twin_period``).
    """
    if not gqa_feasible(heads, kv_heads, target_heads, target_kv_heads):
        raise ValueError(
            f"cannot rearrange {heads} query heads / {kv_heads} KV heads into "
            f"{target_heads} / {target_kv_heads} losslessly: it needs KV_T >= KV_S * "
            f"ceil(g_S / g_T) = {kv_heads} * ceil({heads // kv_heads} / {target_heads // target_kv_heads}); "
            f"use more KV heads or keep the query heads per KV head")
    group, target_group = heads // kv_heads, target_heads // target_kv_heads
    kv_period = kv_heads
    if twins and target_group == 1:  # a query head's twin must come with a KV twin
        kv_period = twin_period(kv_heads, target_kv_heads)
    kv_map = circular(target_kv_heads, kv_period)
    q_map = torch.empty(target_heads, dtype=torch.int64)
    for c in range(kv_period):
        served = torch.nonzero(kv_map[torch.arange(target_heads) // target_group] == c).flatten()
        period = twin_period(group, served.numel()) if twins else group
        q_map[served] = c * group + torch.arange(served.numel()) % period
    return q_map, kv_map


def layers(n_source: int, n_target: int, positions: list[int] | None) -> list[tuple[int, bool]]:
    """Per target layer: (source layer it is made from, inserted?). An inserted layer is made
    from the layer just before it. ``positions`` are target indices of the new layers;
    by default they are spread evenly (one after every other layer for 2x, LEMON's
    interleaving 1 1' 2 2' ...)."""
    n_new = n_target - n_source
    if positions is None:
        # copies after source layer l: spread n_new as evenly as possible, later layers first
        per_layer = [n_new // n_source] * n_source
        remainder = n_new % n_source
        for i in range(remainder):
            per_layer[n_source - 1 - (i * n_source) // remainder] += 1
        plan: list[tuple[int, bool]] = []
        for source, extra in enumerate(per_layer):
            plan += [(source, False)] + [(source, True)] * extra
        return plan
    inserted = set(positions)
    plan, source = [], -1
    for t in range(n_target):
        if t in inserted:
            plan.append((source, True))
        else:
            source += 1
            plan.append((source, False))
    return plan


def compose_layers(earlier: list[tuple[int, bool]], later: list[tuple[int, bool]]) -> list[tuple[int, bool]]:
    """The layer map of two expansions in a row: ``later`` maps the final model's layers to the
    intermediate one's, ``earlier`` those to the first model's. A layer is inserted if it was
    inserted in either step."""
    return [(earlier[s][0], inserted or earlier[s][1]) for s, inserted in later]


def fitting_layer_map(candidates, n_source: int, n_target: int) -> list[tuple[int, bool]] | None:
    """The first of ``candidates`` (layer maps, nearest source first) that maps ``n_target``
    layers onto all of ``n_source``: the map to the model at hand among an expansion's
    ancestors. Two that fit are the same map (same layer counts: the step between is identity).
    Equal counts with none that fits (a model against a copy of itself): layer to layer."""
    for layer_map in candidates:
        if len(layer_map) == n_target and sorted({s for s, _ in layer_map}) == list(range(n_source)):
            return [(int(s), bool(inserted)) for s, inserted in layer_map]
    return [(t, False) for t in range(n_target)] if n_source == n_target else None
