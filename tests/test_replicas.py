"""Replicas compute bit-identical values: the invariant that keeps deep expansions exact.

Exact in real arithmetic is not enough. If two replicas of a unit (a copied head, neuron or
stream dimension) carried different noise in their rows, they would compute different fp32
round-off, and noisy weights amplify that difference layer after layer. So along every axis
that is not summed, output indices with the same source and scale get identical lines, noise
included; the noise lives on the summed axis, where the replicas' lines differ (and sum to
the original). Checked here on the weights of every family and expansion kind, and on the
hidden states of the expanded models' forward passes.
"""
from __future__ import annotations

import pytest
import torch

import lemon
from lemon.verification import random_inputs

from conftest import make_model

KINDS = {
    "hidden_x2": dict(hidden_size=64),
    "hidden_non_multiple": dict(hidden_size=48, intermediate_size=100),
    "heads_and_ffn": dict(hidden_size=64, num_attention_heads=8, intermediate_size=150),
    "depth": dict(num_hidden_layers=5),
    "all_at_once": dict(hidden_size=48, intermediate_size=100, num_hidden_layers=5),
}
FAMILIES = ["gpt2", "gpt2_classifier", "gpt2_token_classifier", "vit", "vit_mim", "bert", "bert_pretraining",
            "bert_qa", "llama", "llama_tied", "llama_mha_bias", "llama_token_classifier", "mistral", "qwen2",
            "gpt_neox", "gpt_neox_classifier", "opt", "opt_projected", "opt_post_ln", "phi3", "qwen3", "olmo2", "gemma2", "gemma3"]


def cases():
    for family in FAMILIES:
        for kind, kwargs in KINDS.items():
            if family.startswith(("bert", "opt")) and kwargs.get("hidden_size", 64) % 32:
                continue  # post-LN widens by integer multiples only
            if family == "olmo2" and kwargs.get("hidden_size", 64) % 32:
                kwargs = {**kwargs, "num_attention_heads": 4}  # every head copied equally often
            yield pytest.param(family, kwargs, id=f"{family}-{kind}")
    yield pytest.param("llama", dict(num_attention_heads=6, num_key_value_heads=6, hidden_size=48),
                       id="llama-gqa_rearranged")


def _lines_by_class(axis) -> list[torch.Tensor]:
    """Groups of output indices along an axis with the same source and the same scale."""
    scale = axis.scale if axis.scale is not None else torch.ones(len(axis), dtype=torch.float64)
    keys = {}
    for i, (s, c) in enumerate(zip(axis.source.tolist(), scale.tolist())):
        keys.setdefault((s, c), []).append(i)
    return [torch.tensor(g) for g in keys.values() if len(g) > 1]


@pytest.mark.parametrize("family,kwargs", list(cases()))
def test_replica_lines_are_bit_identical_noise_included(family, kwargs):
    small = make_model(family)
    plan = lemon.expand_plan(small, **kwargs)
    params = dict(lemon.expand(small, progress=False, **kwargs).named_parameters(remove_duplicate=False))
    checked = noisy = 0
    for name, tensor_plan in plan.tensors.items():
        view = params[name].detach().reshape(tensor_plan.view_shape)
        for axis in (0, 1):
            if axis == tensor_plan.noise_axis:
                continue
            lines = view if axis == 0 else view.T
            for group in _lines_by_class(tensor_plan.axes[axis]):
                first = lines[group[0]]
                for other in group[1:]:
                    assert torch.equal(lines[other], first), f"{name}: axis {axis} lines {group.tolist()}"
                checked += 1
                noisy += tensor_plan.has_noise
    assert checked > 0 and noisy > 0, "the expansion has replicas, and some carry noise"


@pytest.mark.parametrize("family,kwargs", list(cases())[:3])
def test_replicas_along_the_summed_axis_differ(family, kwargs):
    """The other half of the invariant: symmetry is broken on the summed axis."""
    small = make_model(family)
    plan = lemon.expand_plan(small, **kwargs)
    params = dict(lemon.expand(small, progress=False, **kwargs).named_parameters(remove_duplicate=False))
    differing = 0
    for name, tensor_plan in plan.tensors.items():
        if not tensor_plan.has_noise:
            continue
        view = params[name].detach().reshape(tensor_plan.view_shape)
        lines = view if tensor_plan.noise_axis == 0 else view.T
        for group in _lines_by_class(tensor_plan.axes[tensor_plan.noise_axis]):
            differing += not torch.equal(lines[group[0]], lines[group[1]])
    assert differing > 10


FORWARD = {  # x2 widths of realistic-width models; the copies of the stream must match bit for bit
    "gpt2": ("GPT2LMHeadModel", dict(n_embd=256, n_layer=4, n_head=4, vocab_size=500),
             dict(hidden_size=512, intermediate_size=2048)),
    "llama": ("LlamaForCausalLM", dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=512, vocab_size=500),
              dict(hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4)),
    "bert": ("BertModel", dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=512, vocab_size=500), dict(hidden_size=512, intermediate_size=1024)),
    "vit": ("ViTModel", dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=384,
                             image_size=32, patch_size=8), dict(hidden_size=384, intermediate_size=768)),
}


@pytest.mark.parametrize("family", sorted(FORWARD))
def test_the_stream_copies_are_bit_identical_in_every_layer_of_the_forward_pass(family):
    """Assumes what CPU BLAS libraries do: every output element of a matrix product accumulates
    its dot product in the same order, so equal inputs and equal weight lines give equal bits."""
    import transformers as T

    cls, config_kwargs, sizes = FORWARD[family]
    config_class = getattr(T, cls.replace("LMHeadModel", "Config").replace("ForCausalLM", "Config")
                           .replace("Model", "Config"))
    torch.manual_seed(0)
    small = getattr(T, cls)(config_class(**config_kwargs)).eval()  # transformers' default init
    big = lemon.expand(small, progress=False, **sizes).eval()
    width = small.config.hidden_size
    with torch.no_grad():
        hidden = big(**random_inputs(small, batch=2, length=33), output_hidden_states=True).hidden_states
    assert len(hidden) == small.config.num_hidden_layers + 1
    for layer, h in enumerate(hidden):
        assert torch.equal(h[..., :width], h[..., width:2 * width]), f"layer {layer}"
