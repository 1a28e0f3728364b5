"""Bad requests fail before any work, with a message that names the problem and the fix."""
from __future__ import annotations

import re

import pytest
import torch
import transformers as T

import lemon

from conftest import make_model

CASES = [
    # (family, kwargs, words the message must contain)
    ("gpt2", dict(hidden_size=16), ["hidden_size=16", "smaller", "at least 32"]),
    ("gpt2", dict(num_hidden_layers=1), ["num_hidden_layers=1", "only grows"]),
    ("llama", dict(intermediate_size=32), ["intermediate_size=32", "at least 64"]),
    ("gpt2", dict(hidden_size=50), ["head dimension 8", "multiple of 8", "48 or 56"]),
    ("qwen3", dict(hidden_size=50), ["head dimension 8", "48 or 56", "or pass num_attention_heads as well"]),
    ("gpt2", dict(hidden_size=64, num_attention_heads=6), ["num_attention_heads=6", "num_attention_heads=8"]),
    ("vit", dict(hidden_size=0), ["positive integer"]),
    ("vit", dict(hidden_size=48.0), ["positive integer"]),
    ("bert", dict(hidden_size=48), ["post-LayerNorm", "integer multiples", "64 or 96"]),
    ("gpt2", dict(hidden_size=64, num_key_value_heads=4), ["no grouped-query attention", "num_key_value_heads"]),
    ("llama", dict(num_attention_heads=6, num_key_value_heads=4), ["not a multiple", "num_key_value_heads=4"]),
    ("llama", dict(num_attention_heads=5), ["num_attention_heads=5", "pass num_key_value_heads"]),
    ("llama", dict(num_key_value_heads=1), ["num_key_value_heads=1", "smaller"]),
    ("llama", dict(num_hidden_layers=4, layer_positions=[1]), ["layer_positions", "2 distinct"]),
    ("llama", dict(num_hidden_layers=4, layer_positions=[0, 1]), ["layer_positions", "[1, 4)"]),
    ("llama", dict(num_hidden_layers=4, layer_positions=[2, 2]), ["layer_positions"]),
    ("llama", dict(num_hidden_layers=4, layer_positions=[2, 4]), ["layer_positions"]),
    ("gpt2", dict(hidden_size=64, noise_std=-1.0), ["noise_std", ">= 0"]),
    ("gpt2", dict(hidden_size=64, noise_std=float("inf")), ["noise_std", "finite", "inf"]),
    ("gpt2", dict(hidden_size=64, noise_std=float("nan")), ["noise_std", "finite", "nan"]),
    ("gpt2", dict(hidden_size=64, seed=2**64), ["seed=18446744073709551616", "[0, 2**64)", "seed=0"]),
    ("gpt2", dict(hidden_size=64, seed=-1), ["seed=-1", "[0, 2**64)"]),
    ("gpt2", dict(), ["nothing to expand", "hidden_size, intermediate_size, num_attention_heads",
                      "num_hidden_layers", "hidden_size=32", "intermediate_size=64", "num_hidden_layers=2"]),
    ("llama", dict(hidden_size=32, num_key_value_heads=2), ["nothing to expand", "num_key_value_heads=2"]),
    ("olmo2", dict(hidden_size=48), ["over all heads at once", "copied equally often", "4 -> 6",
                                     "num_attention_heads as a multiple of 4"]),
    ("olmo2", dict(num_attention_heads=6, num_key_value_heads=6), ["over all heads at once", "equally often"]),
    ("opt", dict(hidden_size=48), ["eps is fixed", "no config field", "32 -> 48", "64 or 96"]),
    ("opt_post_ln", dict(hidden_size=48), ["eps is fixed", "64 or 96"]),
    ("gpt_neox", dict(hidden_size=64, num_key_value_heads=4), ["no grouped-query attention"]),
    ("phi3", dict(hidden_size=64, num_attention_heads=6), ["num_attention_heads=6", "num_attention_heads=8"]),
    # LlamaConfig.validate() refuses it although lemon's decoupled head_dim could build it
    ("llama", dict(hidden_size=40, num_attention_heads=6),
     ["LlamaConfig", "hidden_size=40", "num_attention_heads=6", "not a multiple", "saved",
      "e.g. 36 or 42", "divides hidden_size=40"]),
]


@pytest.mark.parametrize("family,kwargs,words", CASES, ids=[f"{f}-{'-'.join(k)}" for f, k, _ in CASES])
def test_bad_request_is_a_clear_value_error(family, kwargs, words):
    small = make_model(family)
    before = {n: p.clone() for n, p in small.state_dict().items()}
    with pytest.raises(ValueError) as err:
        lemon.expand(small, progress=False, **kwargs)
    for word in words:
        assert word in str(err.value), f"{word!r} not in: {err.value}"
    assert all(torch.equal(before[n], p) for n, p in small.state_dict().items())


def test_impossible_gqa_rearrangement_names_the_condition():
    """6 query heads / 2 KV heads (g = 3) -> 6 / 3 (g = 2): a source group of 3 query heads
    needs 2 KV copies, so 2 groups need 4 > 3 KV heads."""
    config = T.LlamaConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=6, num_key_value_heads=2,
                           intermediate_size=64, vocab_size=50)
    small = T.LlamaForCausalLM(config)
    with pytest.raises(ValueError, match=r"KV_T >= KV_S \* ceil\(g_S / g_T\)") as err:
        lemon.expand(small, num_key_value_heads=3)
    assert "num_key_value_heads >= 4" in str(err.value)
    assert str(err.value).endswith("use num_key_value_heads=6")  # more KV heads, as asked: not the source's 2
    # 8 / 2 -> 9 / 3 needs 4 KV heads, which 9 query heads cannot share out: the fix offered is one that works
    config = T.LlamaConfig(hidden_size=64, head_dim=8, num_hidden_layers=1, num_attention_heads=8,
                           num_key_value_heads=2, intermediate_size=64, vocab_size=50)
    small = T.LlamaForCausalLM(config)
    with pytest.raises(ValueError, match="needs num_key_value_heads >= 4") as err:
        lemon.expand(small, hidden_size=72, num_attention_heads=9, num_key_value_heads=3)
    offered = int(re.search(r"use num_key_value_heads=(\d+)", str(err.value)).group(1))
    assert offered == 9
    lemon.expand_plan(small, hidden_size=72, num_attention_heads=9, num_key_value_heads=offered)


def test_unsupported_architecture_lists_what_is_supported():
    config = T.GPTJConfig(n_embd=32, n_layer=1, n_head=4, vocab_size=50, n_positions=32, rotary_dim=4)
    with pytest.raises(ValueError, match="model_type 'gptj'") as err:
        lemon.expand(T.GPTJForCausalLM(config), hidden_size=64)
    for family in ("bert", "vit", "gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "olmo2", "gpt_neox", "opt", "phi3"):
        assert family in str(err.value)


def test_a_plain_module_without_config_is_refused():
    with pytest.raises(ValueError, match="no .config"):
        lemon.expand(torch.nn.Linear(4, 4), hidden_size=8)


@pytest.mark.parametrize("wrap,attribute", [(torch.compile, "_orig_mod"), (torch.nn.DataParallel, "module")],
                         ids=["torch.compile", "DataParallel"])
def test_a_wrapped_model_is_refused_with_the_attribute_to_pass(wrap, attribute):
    """torch.compile's wrapper forwards .config to the model inside, so without the check lemon
    would try to rebuild the wrapper class from a config (a TypeError deep in torch)."""
    small = make_model("llama")
    with pytest.raises(ValueError, match=rf"pass model\.{attribute}") as err:
        lemon.expand(wrap(small), hidden_size=48)
    assert "LlamaForCausalLM" in str(err.value)
    assert lemon.expand(getattr(wrap(small), attribute), hidden_size=48, progress=False).config.hidden_size == 48


def test_a_model_partly_on_the_meta_device_is_refused_before_anything_moves():
    """An offloaded or partly loaded model would expand to a model with some tensors without values."""
    small = make_model("llama")
    small.model.layers[1].mlp.to("meta")
    with pytest.raises(ValueError, match=r"3 of LlamaForCausalLM's parameters are on the meta device.*"
                                         r"model\.layers\.1\.mlp\.gate_proj\.weight.*Load every weight"):
        lemon.expand(small, hidden_size=48)


def test_a_parameter_without_a_role_is_refused_not_guessed():
    small = make_model("gpt2")
    small.transformer.extra = torch.nn.Linear(32, 32)
    with pytest.raises(ValueError, match="transformer.extra.weight"):
        lemon.expand(small, hidden_size=64)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        lemon.expand(make_model("gpt2"), hidden_size=64, backend="gpu")


TYPE_CASES = [
    # (kwargs, words the message must contain)
    (dict(seed="7"), ["seed", "'7'", "str", "seed=7"]),
    (dict(seed=7.0), ["seed", "float", "seed=7"]),
    (dict(seed=True), ["seed", "bool"]),
    (dict(noise_std="0.02"), ["noise_std", "real number", "str"]),
    (dict(noise_std=True), ["noise_std", "bool"]),
    (dict(num_hidden_layers=3, layer_positions=2), ["layer_positions", "list such as [2]"]),
    (dict(num_hidden_layers=3, layer_positions="2"), ["layer_positions", "string"]),
]


@pytest.mark.parametrize("kwargs,words", TYPE_CASES, ids=[repr(k) for k, _ in TYPE_CASES])
def test_an_argument_of_the_wrong_type_is_a_type_error(kwargs, words):
    small = make_model("gpt2")
    with pytest.raises(TypeError) as err:
        lemon.expand(small, **{"hidden_size": 64, "progress": False, **kwargs})
    for word in words:
        assert word in str(err.value), f"{word!r} not in: {err.value}"


def test_numpy_scalars_are_accepted_as_seed_and_noise_std():
    import numpy as np

    small = make_model("gpt2")
    plan = lemon.expand_plan(small, hidden_size=64, seed=np.int64(7), noise_std=np.float32(0.01))
    assert plan.seed == 7 and type(plan.seed) is int and plan.noise_std == pytest.approx(0.01)
    numpy_seeded = lemon.expand(small, hidden_size=64, seed=np.uint64(2**64 - 1), progress=False)
    int_seeded = lemon.expand(small, hidden_size=64, seed=2**64 - 1, progress=False)
    for p, q in zip(numpy_seeded.parameters(), int_seeded.parameters()):
        assert torch.equal(p, q)


def test_a_parameter_that_only_ends_like_a_known_one_is_refused():
    """GPT-2's adapter knows ``score.weight`` (sequence classification); a ``score`` attached by
    hand to a GPT2LMHeadModel matches that pattern, but the class does not create it."""
    small = make_model("gpt2")
    small.score = torch.nn.Linear(32, 3, bias=False)
    with pytest.raises(ValueError, match="rebuilds the model from its config") as err:
        lemon.expand(small, hidden_size=64, progress=False)
    assert "score.weight" in str(err.value) and "GPT2LMHeadModel" in str(err.value)


def test_a_parameter_the_class_creates_but_the_source_lacks_is_refused():
    small = make_model("gpt2")
    small.transformer.ln_f.bias = None  # the rebuilt GPT2LMHeadModel has one: nothing to fill it from
    with pytest.raises(ValueError, match="transformer.ln_f.bias") as err:
        lemon.expand(small, hidden_size=64, progress=False)
    assert "source model lacks" in str(err.value)


def test_a_tied_head_without_a_final_norm_cannot_be_widened():
    """OPT post-LN without word-embedding projections: the tied head reads the last layer's
    output directly; the k stream copies would multiply the logits by k (HyperCloning's OPT
    result). Depth alone stays possible."""
    config = T.OPTConfig(hidden_size=32, ffn_dim=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=97,
                         do_layer_norm_before=False, max_position_embeddings=64, pad_token_id=1)
    small = T.OPTForCausalLM(config).eval()
    with pytest.raises(ValueError, match="no final norm between them.*multiplied by k"):
        lemon.expand(small, hidden_size=64)
    big = lemon.expand(small, num_hidden_layers=3, progress=False)
    assert lemon.verify(small, big).output_relative <= 1e-5
