"""Every fused executor gives the reference executor's bits, on every plan.

The executors (the ``fused`` fixture):
* ``triton``: lemon_kernels; without a GPU the real kernels run through Triton's interpreter
  (TRITON_INTERPRET=1, set in conftest.py) on CPU tensors, on a GPU machine on CUDA tensors;
* ``cpp``: the C++ CPU executor (torch.ops.lemon.expand_segment on CPU tensors);
* ``cuda_emulated``: the CUDA kernel's per-thread code run on the CPU
  (torch.ops.lemon.emulate_cuda_segment), which checks the CUDA algorithm's bits everywhere;
* ``cuda``: the CUDA executor itself, only where a GPU and a CUDA build of the extension are.
Every output is NaN-poisoned before the run, so an element the executor does not write fails.
"""
from __future__ import annotations

import random
import warnings

import pytest
import torch

import lemon
from lemon import maps, reference
from lemon.noise import tensor_key
from lemon.model import build
from lemon.plan import MEAN, ONE, ZERO, Axis, TensorPlan, extended_index

from conftest import make_model
from test_reference import random_plan

from lemon import native, segments
from lemon_kernels import executor  # noqa: E402  (Triton is a test dependency)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]

EXECUTORS = {  # name -> (execute, device of its tensors, CPU loops of the C++ executor)
    "triton": (executor.execute, DEVICE, None),
    "cuda_emulated": (native.emulate_cuda, "cpu", None),
}
# the C++ executor once per instruction set this CPU runs: each variant must give the same bits
for isa in native.build_info().get("cpu_isas", ["missing"]):  # "missing": execute_cpu raises, the tests fail
    EXECUTORS[f"cpp-{isa}"] = (native.execute_cpu, "cpu", isa)
if torch.cuda.is_available() and native.has_cuda_executor():
    EXECUTORS["cuda"] = (native.execute_cuda, "cuda", None)

BACKEND_DEVICE = {"triton": DEVICE, "cpp": "cpu", "cuda": "cuda"}  # the fused backends, where they run here
BACKENDS = [name for name in BACKEND_DEVICE if name == "cpp" or name in EXECUTORS]


@pytest.fixture(params=list(EXECUTORS))
def fused(request):
    execute, device, isa = EXECUTORS[request.param]
    if isa is None:
        yield execute, device
        return
    previous = native.extension().set_cpu_isa(isa)
    try:
        yield execute, device
    finally:
        native.extension().set_cpu_isa(previous)


def run_both(fused, plan: TensorPlan, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the executor's output, the reference's) for ``plan`` on ``source``; the executor's into a
    NaN-poisoned block of the plan's window."""
    execute, device = fused
    out = torch.full(plan.output_shape, float("nan"), dtype=source.dtype, device=device)
    got = execute(plan, source.to(device), out=out)
    assert got is out
    return got.cpu(), reference.execute(plan, source)


def assert_same_bits(fused, plan, source):
    got, want = run_both(fused, plan, source)
    assert not torch.isnan(got).any(), f"{plan.name}: {int(torch.isnan(got).sum())} elements not written"
    assert torch.equal(got, want), (f"{plan.name}: max |delta| "
                                    f"{(got.double() - want.double()).abs().max().item():g}")


# ---------------------------------------------------------------- random plans (the reference's own)

@pytest.mark.parametrize("noise_axis", [None, 0, 1])
@pytest.mark.parametrize("n_rows,n_cols", [(1, 1), (7, 33), (33, 7), (33, 33), (520, 7), (3, 1030)])
def test_random_plans_give_the_reference_bits_in_every_dtype(n_rows, n_cols, noise_axis, fused):
    for rep in range(2):
        seed = 7000 * n_rows + 13 * n_cols + rep + (0 if noise_axis is None else 50_000 * (noise_axis + 1))
        plan, source = random_plan(seed, n_rows, n_cols, noise_axis)
        for dtype in DTYPES:
            assert_same_bits(fused, plan, source.to(dtype))


# ---------------------------------------------------------------- plans shaped like the rules' plans

def structured_axis(rng: random.Random, kind: str, n_source: int, n_target: int) -> Axis:
    """An axis as the rules make them: streams in every form, circular units, head blocks,
    GQA rearrangements, twin maps, identity; split axes get 1/n scales."""
    head_dim = 4
    if kind in ("avg", "zero", "circ"):
        index = maps.stream(n_source, n_target, kind)
    elif kind == "heads":
        index = maps.blocks(maps.circular(n_target // head_dim, n_source // head_dim), head_dim)
    elif kind == "gqa":  # 4 query heads / 2 KV heads -> 6 / 6: rearranged, not circular
        index = maps.blocks(maps.attention_heads(4, 2, 6, 6)[0], head_dim)
    elif kind == "twins":
        index = maps.circular(n_target, maps.twin_period(n_source, n_target))
    else:
        index = torch.arange(n_target) % n_source
    split = rng.random() < 0.5
    scale = maps.split_scale(index) if split else torch.tensor([rng.uniform(0.5, 1.5) for _ in index])
    return Axis(index, scale if rng.random() < 0.8 else None)


AXIS_SHAPES = {  # kind -> (source length, target length)
    "avg": (24, 61), "zero": (24, 50), "circ": (40, 100), "heads": (16, 40), "gqa": (16, 24),
    "twins": (33, 33), "keep": (37, 37), "wide_circ": (32, 512),
}


@pytest.mark.parametrize("noise_axis", [0, 1, None])
@pytest.mark.parametrize("noise_kind", ["zero", "circ", "heads", "gqa", "twins", "wide_circ"])
@pytest.mark.parametrize("other_kind", ["avg", "heads", "keep"])
def test_rule_shaped_plans_give_the_reference_bits(noise_kind, other_kind, noise_axis, fused):
    rng = random.Random(hash((noise_kind, other_kind, noise_axis)) % 2**32)
    kinds = (noise_kind, other_kind) if noise_axis in (0, None) else (other_kind, noise_kind)
    axes = []
    for kind in kinds:
        n_source, n_target = AXIS_SHAPES[kind]
        axes.append(structured_axis(rng, "circ" if kind == "wide_circ" else kind, n_source, n_target))
    src_shape = tuple(AXIS_SHAPES[k][0] for k in kinds)
    name = f"w.{noise_kind}.{other_kind}"
    plan = TensorPlan(name=name, source=name, source_shape=src_shape, shape=tuple(len(a) for a in axes), split=1,
                      axes=tuple(axes), noise_axis=noise_axis, noise_std=0.02 if noise_axis is not None else 0.0,
                      noise_key=tensor_key(3, name))
    source = torch.randn(src_shape, generator=torch.Generator().manual_seed(len(name)))
    for dtype in (torch.float32, torch.bfloat16):
        assert_same_bits(fused, plan, source.to(dtype))


def test_closed_and_table_noise_paths_are_both_exercised(fused):
    """Circular maps and GQA rearrangements keep each replica group inside one periodic segment
    (the next replica is implied); a map with no period does not (the next replica comes from
    a table), and both give the reference's bits."""
    scattered = torch.randint(0, 20, (50,), generator=torch.Generator().manual_seed(0))
    cases = [(maps.circular(100, 40), 40, True),
             (maps.blocks(maps.attention_heads(4, 2, 6, 6)[0], 4), 16, True),
             (scattered, 20, False)]
    for index, n_source, closed in cases:
        axis = Axis(index, maps.split_scale(index))
        ext = axis.extended(n_source)
        segs = segments.segments(ext, n_source)
        assert all(segments._closed(s, axis.next_replica, 0, ext < n_source) == closed for s in segs)
        plan = TensorPlan(name="t", source="t", source_shape=(7, n_source), shape=(7, len(axis)), split=1,
                          axes=(Axis(torch.arange(7)), axis), noise_axis=1, noise_std=0.1,
                          noise_key=tensor_key(0, "t"))
        assert_same_bits(fused, plan, torch.randn(7, n_source, generator=torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------- windows, specials, sizes

@pytest.mark.parametrize("noise_axis", [0, 1])
def test_windows_that_cut_replica_groups_give_the_slice_of_the_whole(noise_axis, fused):
    rng = random.Random(noise_axis)
    noise = structured_axis(rng, "circ", 40, 100)
    other = structured_axis(rng, "avg", 24, 61)
    axes = (noise, other) if noise_axis == 0 else (other, noise)
    shape = tuple(len(a) for a in axes)
    src_shape = (40, 24) if noise_axis == 0 else (24, 40)
    plan = TensorPlan(name="win", source="win", source_shape=src_shape, shape=shape, split=1, axes=axes,
                      noise_axis=noise_axis, noise_std=0.05, noise_key=tensor_key(1, "win"))
    source = torch.randn(src_shape, generator=torch.Generator().manual_seed(2))
    whole, _ = run_both(fused, plan, source)
    for axis, (start, stop) in [(noise_axis, (17, 83)), (1 - noise_axis, (5, 50)), (noise_axis, (0, 1))]:
        block = plan.restrict(axis, start, stop)
        assert_same_bits(fused, block, source)
        got, _ = run_both(fused, block, source)
        assert torch.equal(got, whole.narrow(axis, start, stop - start))
    assert_same_bits(fused, plan.restrict(0, 3, 30).restrict(1, 7, 40), source)


def test_specials_on_both_axes(fused):
    rows = torch.tensor([0, 1, MEAN, ONE, ZERO, 1, 0, MEAN] * 3)
    cols = torch.cat([torch.arange(20) % 5, torch.tensor([MEAN, ONE, ZERO, MEAN])])
    plan = TensorPlan(name="s", source="s", source_shape=(2, 5), shape=(24, 24), split=1,
                      axes=(Axis(rows, torch.linspace(-2, 2, 24, dtype=torch.float64)), Axis(cols)))
    for dtype in DTYPES:
        assert_same_bits(fused, plan, torch.randn(2, 5, generator=torch.Generator().manual_seed(9)).to(dtype))


@pytest.mark.parametrize("n_src_cols,col_copies", [(769, 1), (300, 64), (1, 3)])
@pytest.mark.parametrize("noise_axis", [None, 0])  # (noise on the columns cannot read MEAN)
def test_mean_columns_without_mean_rows(n_src_cols, col_copies, noise_axis, fused):
    """MEAN columns only: the C++ executor takes each source row's mean in its own pass (no
    row_means side input) and must give mean_along's bits, on rows wide enough for every level
    of the tree (769: odd carries), and with the row cut into column tiles (300 columns times 64
    copies: 256-column tiles, each taking the whole row's mean)."""
    n_src_rows = 7
    cols = torch.cat([torch.arange(n_src_cols * col_copies) % n_src_cols, torch.tensor([MEAN, ONE, MEAN])])
    rows = maps.circular(2 * n_src_rows + 3, n_src_rows)
    axes = (Axis(rows, maps.split_scale(rows)), Axis(cols))
    plan = TensorPlan(name="m", source="m", source_shape=(n_src_rows, n_src_cols), shape=(len(rows), len(cols)),
                      split=1, axes=axes, noise_axis=noise_axis, noise_std=0.0 if noise_axis is None else 0.02,
                      noise_key=tensor_key(4, "m"))
    assert plan.axes[1].has_mean and not plan.axes[0].has_mean
    source = torch.randn(n_src_rows, n_src_cols, generator=torch.Generator().manual_seed(n_src_cols)) + 3.0
    for dtype in DTYPES:
        assert_same_bits(fused, plan, source.to(dtype))
    assert_same_bits(fused, plan.restrict(0, 3, 12), source)


def test_counters_above_2_pow_32_take_the_wide_path(fused):
    """class * len(noise axis) crosses 2^32: the other axis holds source rows up to 69999 (and
    MEAN, class 70000) of a 70000 x 16 source, the noise axis is 70001 long; class 61355's
    counters cross 2^32 at noise index 55941. Windows keep the launches small."""
    n_noise, n_other = 70_001, 70_000
    noise = Axis(torch.arange(n_noise) % 16)
    other = Axis(torch.tensor([61_355, 0, 69_999, MEAN, 61_355, 12]))
    plan = TensorPlan(name="big", source="big", source_shape=(n_other, 16), shape=(6, n_noise), split=1,
                      axes=(other, noise), noise_axis=1, noise_std=0.02, noise_key=tensor_key(5, "big"))
    assert (n_other + 1) * n_noise > 2**32 > 61_355 * n_noise + 55_940
    source = torch.randn(n_other, 16, generator=torch.Generator().manual_seed(1))
    for start, stop in [(0, 300), (55_900, 56_000), (69_900, 70_001)]:
        assert_same_bits(fused, plan.restrict(1, start, stop), source)


# ---------------------------------------------------------------- whole models, dispatch, in place

@pytest.mark.parametrize("family,kwargs", [
    ("gpt2", dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3)),
    ("llama", dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, num_hidden_layers=3)),
    ("llama", dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=6)),
    ("llama_tied", dict(hidden_size=48, intermediate_size=100, num_hidden_layers=4)),
    ("bert", dict(hidden_size=64, num_hidden_layers=3)),
    ("vit", dict(hidden_size=48, intermediate_size=100, num_hidden_layers=3)),
    ("gpt_neox", dict(hidden_size=48, intermediate_size=100, num_hidden_layers=3)),
    ("opt_projected", dict(hidden_size=64, num_hidden_layers=3)),
    ("phi3", dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, intermediate_size=100)),
    ("qwen3", dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=3, num_hidden_layers=3)),
    ("olmo2", dict(hidden_size=48, num_attention_heads=8, num_key_value_heads=4, num_hidden_layers=3)),
    ("gemma2", dict(hidden_size=48, intermediate_size=100, num_hidden_layers=3)),  # (1 + w) gains: offset plans
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_models_expand_to_the_reference_bits(family, kwargs, dtype, backend):
    small = make_model(family, dtype=dtype)
    reference_model = lemon.expand(small, backend="reference", progress=False, **kwargs)
    with warnings.catch_warnings():
        # the executor runs here: no fallback to the reference (Triton 3.6's interpreter raises
        # NumPy DeprecationWarnings of its own, and bf16 gets lemon's note on 16-bit noise)
        warnings.filterwarnings("error", message="lemon: backend .* is not available", category=UserWarning)
        model = lemon.expand(small.to(BACKEND_DEVICE[backend]), backend=backend, progress=False, **kwargs)
    want = reference_model.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor.cpu(), want[name]), name


def test_triton_is_listed_and_dispatched_where_it_runs(monkeypatch):
    assert "triton" in lemon.available_backends()
    from lemon import backends

    assert backends.executor("triton", torch.device(DEVICE)) is executor.execute
    if DEVICE == "cpu":  # without the interpreter, CPU tensors fall back with one warning
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert "triton" not in lemon.available_backends()
        with pytest.warns(UserWarning, match="'triton' is not available here for cpu tensors") as record:
            run = backends.executor("triton", torch.device("cpu"))
        assert run is reference.execute and len(record) == 1
        assert record[0].filename == __file__ or record[0].filename.endswith("test_executors.py")
        assert backends.executor("auto", torch.device("cpu")) is native.execute_cpu  # not the interpreter


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("family", ["gpt2", "llama_tied", "bert"])
def test_expand_in_place_equals_expand_and_keeps_ties(family, backend):
    kwargs = dict(hidden_size=64, num_hidden_layers=3)
    expected = lemon.expand(make_model(family), backend="reference", progress=False, **kwargs)
    model = make_model(family)
    old = list(model.parameters())
    result = lemon.expand_(model, backend=backend, progress=False, **kwargs)
    assert result is model and model.config.hidden_size == 64 and model.config.num_hidden_layers == 3
    assert all(p.numel() == 0 for p in old), "every source tensor is released"
    assert list(model.state_dict()) == list(expected.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected.state_dict()[name]), name
    params = dict(model.named_parameters(remove_duplicate=False))
    ties = {"gpt2": ("lm_head.weight", "transformer.wte.weight"),
            "llama_tied": ("lm_head.weight", "model.embed_tokens.weight"),
            "bert": ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight")}[family]
    assert params[ties[0]] is params[ties[1]]
    assert lemon.verify(make_model(family), model).output_relative <= 1e-5



# ---------------------------------------------------------------- bookkeeping shared between layers

def test_layers_share_axes_and_the_segments_derived_from_them():
    """The rules give every layer's tensor of one role the same axis objects, and the host cuts
    each axis once (Axis.derived) and lays out each axis pair once (segments._Layout): the cached
    cut is the one a fresh cut makes, only the noise key differs between the layers' side inputs,
    and the plans that share it still give the reference's bits (the window tests above cover
    restricted plans)."""
    model = make_model("llama")
    plan = lemon.expand_plan(model, hidden_size=2 * model.config.hidden_size,
                             intermediate_size=2 * model.config.intermediate_size,
                             num_attention_heads=2 * model.config.num_attention_heads)
    params = dict(model.named_parameters())
    names = [n for n in plan.tensors if n.endswith("self_attn.q_proj.weight")]
    assert len(names) >= 2
    first, second = plan[names[0]], plan[names[1]]
    assert all(a is b for a, b in zip(first.axes, second.axes))
    cuts, sides = [], []
    for p in (first, second):
        source = params[p.source].detach()
        side, pairs = segments.fused_work(p, source)
        cuts.append(pairs)
        sides.append(side)
        assert torch.equal(native.execute_cpu(p, source), reference.execute(p, source))
    assert first.has_noise and cuts[0] is cuts[1] and isinstance(cuts[0], tuple)  # one layout for both layers
    assert sides[0].key != sides[1].key and sides[0].key == first.noise_key and sides[1].key == second.noise_key
    assert sides[0].next_table is sides[1].next_table and sides[0].col_scale is sides[1].col_scale
    window = first.restrict(0, 3, 11)  # another window: its own layout, cut from the same axes
    window_pairs = segments.fused_work(window, params[first.source].detach())[1]
    assert window_pairs is not cuts[0] and all(pair.row.length <= 8 for pair in window_pairs)
    assert torch.equal(native.execute_cpu(window, params[first.source].detach()),
                       reference.execute(window, params[first.source].detach()))
    for axis, n_source in zip(first.axes, first.source_view_shape):
        fresh = segments.segments(extended_index(axis.source, n_source), n_source)
        cached = axis.derived(("segments", n_source, 0, len(axis)), lambda: pytest.fail("not cached"))
        assert [(s.start, s.length, s.period, s.first, s.special) for s in fresh] == \
               [(s.start, s.length, s.period, s.first, s.special) for s in cached]
        assert all(torch.equal(s.base, c.base) for s, c in zip(fresh, cached))


def test_the_planned_meta_model_is_handed_out_once():
    """build() fills the target model that planning built for its check; later builds of the
    same plan get a new one, never the filled one, and give the same bits."""
    model = make_model("gpt2")
    plan = lemon.expand_plan(model, hidden_size=2 * model.config.n_embd)
    first, second = build(model, plan, backend="reference"), build(model, plan, backend="reference")
    assert first is not second
    a, b = dict(first.named_parameters()), dict(second.named_parameters())
    assert a.keys() == b.keys() and all(a[n] is not b[n] and torch.equal(a[n], b[n]) for n in a)
    assert all(p.is_meta for p in plan.meta_target().parameters())
