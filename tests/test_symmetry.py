"""Symmetry breaking: copies of a unit must learn different things once training starts,
and the noise behind that is deterministic and at the family's init scale."""
from __future__ import annotations

import pytest
import torch

import lemon
from lemon.verification import random_inputs

from conftest import make_model

# family -> (up-projection name, its neuron axis, query-projection name, its head axis)
UNITS = {
    "gpt2": ("transformer.h.{}.mlp.c_fc.weight", 1, "transformer.h.{}.attn.c_attn.weight", 1),
    "llama": ("model.layers.{}.mlp.up_proj.weight", 0, "model.layers.{}.self_attn.q_proj.weight", 0),
    "bert": ("bert.encoder.layer.{}.intermediate.dense.weight", 0,
             "bert.encoder.layer.{}.attention.self.query.weight", 0),
    "vit": ("vit.layers.{}.mlp.fc1.weight", 0, "vit.layers.{}.attention.q_proj.weight", 0),
    "gpt_neox": ("gpt_neox.layers.{}.mlp.dense_h_to_4h.weight", 0,
                 "gpt_neox.layers.{}.attention.query_key_value.weight", 0),
    "opt": ("model.decoder.layers.{}.fc1.weight", 0, "model.decoder.layers.{}.self_attn.q_proj.weight", 0),
    "phi3": ("model.layers.{}.mlp.gate_up_proj.weight", 0, "model.layers.{}.self_attn.qkv_proj.weight", 0),
    "qwen3": ("model.layers.{}.mlp.up_proj.weight", 0, "model.layers.{}.self_attn.q_proj.weight", 0),
    "olmo2": ("model.layers.{}.mlp.up_proj.weight", 0, "model.layers.{}.self_attn.q_proj.weight", 0),
    "gemma2": ("model.layers.{}.mlp.up_proj.weight", 0, "model.layers.{}.self_attn.q_proj.weight", 0),
    "gemma3": ("model.layers.{}.mlp.up_proj.weight", 0, "model.layers.{}.self_attn.q_proj.weight", 0),
}
SUBLAYER_NORMS = {"olmo2", "gemma2", "gemma3"}  # norms between the writers and the residual add: see rules.py


def _gradients(model):
    model.zero_grad()
    out = model(**random_inputs(model, seed=1))
    main = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    (main.float() ** 2).sum().backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _replica_pair(plan, name, axis):
    source = plan[name].axes[axis].source
    for j in range(source.numel()):
        twins = torch.nonzero(source == source[j]).flatten()
        if source[j] >= 0 and twins.numel() > 1:
            return j, int(twins[1])
    raise AssertionError(f"{name} has no replicas along axis {axis}")


def _difference(grad, axis, pair):
    a, b = (grad.select(axis, j) for j in pair)
    return ((a - b).abs().max() / torch.maximum(a.abs(), b.abs()).max()).item()


@pytest.mark.parametrize("family", sorted(UNITS))
def test_copied_units_get_different_gradients_only_with_noise(family):
    small = make_model(family)
    sizes = dict(hidden_size=64, intermediate_size=128)
    up, up_axis, query, query_axis = UNITS[family]
    differences = {}
    for noise_std in (0.0, None):
        big = lemon.expand(small, noise_std=noise_std, progress=False, **sizes)
        plan = lemon.expand_plan(small, noise_std=noise_std, **sizes)
        grads = _gradients(big)
        differences[noise_std] = [
            _difference(grads[name.format(0)], axis, _replica_pair(plan, name.format(0), axis))
            for name, axis in ((up, up_axis), (query, query_axis))]
    assert max(differences[0.0]) <= 1e-5, differences  # plain copies stay copies under training
    assert min(differences[None]) >= 1e-3, differences  # noise makes the copies diverge


@pytest.mark.parametrize("family", sorted(UNITS.keys() - SUBLAYER_NORMS))
def test_inserted_layers_are_trainable_and_their_twins_diverge(family):
    small = make_model(family)
    big = lemon.expand(small, num_hidden_layers=4, progress=False)  # new layers 1 and 3
    plan = lemon.expand_plan(small, num_hidden_layers=4)
    inserted = [t for t, (_, new) in enumerate(plan.layers) if new]
    assert inserted == [1, 3]
    writers = [n for n in plan.new_parameters() if plan[n].noise_axis is not None
               and float(plan[n].axes[0].scale.abs().max() if plan[n].axes[0].scale is not None else 1) == 0]
    assert writers, "inserted layers have cancel-zero stream writers"
    params = dict(big.named_parameters())
    for name in writers:
        assert params[name].abs().max() > 1e-3, f"{name} should be non-zero (R and -R), not zeros"
    up, axis = UNITS[family][:2]
    grads = _gradients(big)
    name = up.format(inserted[0])
    assert _difference(grads[name], axis, _replica_pair(plan, name, axis)) >= 1e-3


def test_zero_noise_gives_the_plain_copy():
    small = make_model("gpt2")
    big = lemon.expand(small, hidden_size=64, intermediate_size=128, noise_std=0, progress=False)
    s, b = dict(small.named_parameters()), dict(big.named_parameters())
    wte = s["transformer.wte.weight"]
    assert torch.equal(b["transformer.wte.weight"], torch.cat([wte, wte], 1))
    fc = s["transformer.h.0.mlp.c_fc.weight"]  # Conv1D [in, out]: input columns split, neurons copied
    assert torch.allclose(b["transformer.h.0.mlp.c_fc.weight"], torch.cat([fc, fc], 1).repeat(2, 1) / 2)
    down = s["transformer.h.0.mlp.c_proj.weight"]  # [ffn, hidden]: replicas split, stream rows copied
    assert torch.allclose(b["transformer.h.0.mlp.c_proj.weight"],
                          torch.cat([down, down], 0).repeat(1, 2) / 2)


def test_same_seed_is_bit_identical_and_seeds_differ():
    small = make_model("llama")
    kw = dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=3, num_hidden_layers=3,
              progress=False)
    first, again, other = (dict(lemon.expand(small, seed=s, **kw).named_parameters()) for s in (7, 7, 8))
    assert all(torch.equal(first[n], again[n]) for n in first)
    noisy = [n for n in first if not torch.equal(first[n], other[n])]
    assert len(noisy) >= 10, "a different seed changes every noisy tensor"


def test_free_weights_follow_the_init_scale():
    """Columns of a fan-in weight that read the (zero) residue of a non-multiple width are free:
    they get fresh noise of the requested std; the rest of the zero-sum noise is that scale too."""
    small = make_model("llama")
    big = lemon.expand(small, hidden_size=48, noise_std=0.05, progress=False)
    plan = lemon.expand_plan(small, hidden_size=48, noise_std=0.05)
    name = "model.layers.0.mlp.gate_proj.weight"
    free = plan[name].axes[1].source < 0
    values = dict(big.named_parameters())[name][:, free]
    assert values.numel() >= 1000
    assert abs(values.std().item() / 0.05 - 1) < 0.1
    assert abs(values.mean().item()) < 0.01


def test_default_noise_is_the_configs_initializer_range():
    small = make_model("gpt2")
    small.config.initializer_range = 0.037
    assert lemon.expand_plan(small, hidden_size=64).noise_std == 0.037


def test_more_kv_heads_alone_has_no_freedom_so_kv_heads_are_exact_copies():
    """KV projections feed attention, they are not summed: replicas must equal their source."""
    small = make_model("llama")
    big = lemon.expand(small, num_key_value_heads=4, progress=False)
    k_small = dict(small.named_parameters())["model.layers.0.self_attn.k_proj.weight"]
    k_big = dict(big.named_parameters())["model.layers.0.self_attn.k_proj.weight"]
    head_dim = 8
    for new_head, source_head in enumerate([0, 1, 0, 1]):
        assert torch.equal(k_big[new_head * head_dim:(new_head + 1) * head_dim],
                           k_small[source_head * head_dim:(source_head + 1) * head_dim])
    # no lasting symmetry: the copies serve different query heads, so training separates them
    grad = _gradients(big)["model.layers.0.self_attn.k_proj.weight"].view(4, head_dim, -1)
    assert ((grad[0] - grad[2]).abs().max() / grad[0].abs().max()).item() >= 1e-2


@pytest.mark.parametrize("family", sorted(SUBLAYER_NORMS))
def test_inserted_layers_behind_sublayer_norms_add_zero_and_start_learning(family):
    """OLMo 2: an inserted layer's sublayer norms have gain 0 (the layer adds exactly 0); their
    gradient is the normalized sublayer output, so they move at once, and after one step the
    copied neurons of the inserted layer get different gradients."""
    small = make_model(family)
    big = lemon.expand(small, hidden_size=64, intermediate_size=128, num_hidden_layers=4, progress=False)
    plan = lemon.expand_plan(small, hidden_size=64, intermediate_size=128, num_hidden_layers=4)
    report = lemon.verify(small, big)
    assert report.output_relative <= 1e-5, report
    inserted = [t for t, (_, new) in enumerate(plan.layers) if new]
    params = dict(big.named_parameters())
    gains = [n for n in params if any(f"layers.{t}.post_" in n for t in inserted) and n.endswith("layernorm.weight")]
    zero = -1.0 if family.startswith("gemma") else 0.0  # Gemma stores the gain as w in (1 + w)
    assert gains and all(bool((params[n] == zero).all()) for n in gains)
    grads = _gradients(big)
    assert all(grads[n].abs().max() > 1e-4 for n in gains), {n: grads[n].abs().max() for n in gains}
    with torch.no_grad():
        for n in gains:
            params[n] -= 0.1 * grads[n].sign()
    up, axis = UNITS[family][:2]
    name = up.format(inserted[0])
    grads = _gradients(big)
    assert _difference(grads[name], axis, _replica_pair(plan, name, axis)) >= 1e-3
