"""The public surface: what users get back, what they can inspect, and what stays untouched."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import lemon
from lemon.verification import verify

from conftest import make_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_source_model_is_left_untouched():
    small = make_model("llama")
    before = {n: p.clone() for n, p in small.state_dict().items()}
    config_before = small.config.to_dict()
    lemon.expand(small, hidden_size=48, num_hidden_layers=3, progress=False)
    assert small.config.to_dict() == config_before
    assert all(torch.equal(before[n], p) for n, p in small.state_dict().items())


@pytest.mark.parametrize("family", ["gpt2", "llama_tied", "bert", "vit", "qwen2"])
def test_save_and_reload_round_trips(family, tmp_path):
    small = make_model(family)
    kw = dict(hidden_size=64, num_hidden_layers=3) if family == "bert" else dict(hidden_size=48,
                                                                                 num_hidden_layers=3)
    big = lemon.expand(small, progress=False, **kw)
    big.save_pretrained(tmp_path)
    reloaded = type(big).from_pretrained(tmp_path).eval()
    assert reloaded.config.hidden_size == kw["hidden_size"]
    for name, p in big.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], p), name
    reloaded.lemon_layers = big.lemon_layers
    assert verify(small, reloaded).output_relative <= 1e-5  # eps* survived through the config


@pytest.mark.parametrize("family,head,embedding", [
    ("gpt2", "lm_head.weight", "transformer.wte.weight"),
    ("llama_tied", "lm_head.weight", "model.embed_tokens.weight"),
    ("bert", "cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
])
def test_tied_embeddings_stay_tied_without_wrappers(family, head, embedding):
    small = make_model(family)
    big = lemon.expand(small, hidden_size=64, progress=False)
    params = dict(big.named_parameters(remove_duplicate=False))
    assert params[head] is params[embedding]
    assert {type(m) for m in big.modules()} == {type(m) for m in small.modules()}


def test_dtype_device_and_mode_follow_the_source():
    small = make_model("llama", dtype=torch.bfloat16).train()
    big = lemon.expand(small, hidden_size=48, progress=False)
    assert big.training
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in big.parameters())
    # the bf16 expansion is the fp32 expansion rounded once
    ref = lemon.expand(small.float(), hidden_size=48, progress=False)
    for (name, p), q in zip(big.named_parameters(), ref.parameters()):
        assert torch.equal(p, q.to(torch.bfloat16)), name


@pytest.mark.parametrize("in_place", [False, True], ids=["expand", "expand_"])
def test_a_model_on_the_meta_device_expands_to_shapes_on_the_meta_device(in_place):
    """Built on the meta device (no weights loaded), a model expands to the target's shapes,
    on the meta device, whatever the backend: the expanded architecture without memory."""
    kw = dict(hidden_size=48, num_hidden_layers=3, progress=False)
    expected = {n: (p.shape, p.dtype) for n, p in lemon.expand(make_model("llama"), **kw).named_parameters()}
    with torch.device("meta"):
        small = make_model("llama")
    big = (lemon.expand_ if in_place else lemon.expand)(small, backend="cpp" if "cpp" in lemon.available_backends() else "auto",
                                                        **kw)
    assert (big is small) == in_place
    assert {n: (p.shape, p.dtype) for n, p in big.named_parameters()} == expected
    assert {p.device.type for p in big.parameters()} == {"meta"}
    assert big.config.hidden_size == 48 and big.lemon_layers == [(0, False), (1, False), (1, True)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: a model split between it and the CPU")
def test_a_model_split_across_devices_expands_each_tensor_where_it_is():
    """device_map-style placement: each source tensor is expanded by the executor of its own
    device, and the bits do not depend on where it ran."""
    small = make_model("llama")
    whole = lemon.expand(small, hidden_size=48, progress=False)
    small.model.layers[1].to("cuda")
    split = lemon.expand(small, hidden_size=48, progress=False)
    for (name, p), q in zip(split.named_parameters(), whole.parameters()):
        assert p.device.type == ("cuda" if name.startswith("model.layers.1.") else "cpu"), name
        assert torch.equal(p.cpu(), q), name


def test_expand_plan_exposes_maps_and_a_manifest():
    small = make_model("llama")
    plan = lemon.expand_plan(small, hidden_size=48, num_attention_heads=6, num_key_value_heads=3,
                             num_hidden_layers=3)
    assert plan.target_sizes["num_key_value_heads"] == 3
    assert plan.config.head_dim == 8 and plan.config.num_hidden_layers == 3
    q = plan["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (48, 48) and q.source == "model.layers.0.self_attn.q_proj.weight"
    assert q.axes[0].source.tolist()[:8] == list(range(8))  # head 0 rows come from source head 0
    new = q.new_mask()
    assert not new[:32, :32].any() and new[32:].all()
    assert plan.new_parameters() and all(".layers.2." in n for n in plan.new_parameters())
    manifest = json.loads(json.dumps(plan.manifest()))
    assert manifest["layers"][2] == {"source_layer": 1, "inserted": True}
    assert manifest["tensors"]["model.embed_tokens.weight"]["new_elements"] == 97 * 16
    assert "q_proj" in plan.summary()


def test_available_backends_and_fallback(monkeypatch):
    assert lemon.available_backends()[0] == "reference"
    assert set(lemon.available_backends()) <= {"reference", "triton", "cpp", "cuda"}
    small = make_model("gpt2")
    reference = lemon.expand(small, hidden_size=64, backend="reference", progress=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors, no interpreter: Triton cannot run them
    with pytest.warns(UserWarning, match="'triton' is not available here for cpu tensors") as record:
        fallback = lemon.expand(small, hidden_size=64, backend="triton", progress=False)
    assert [w.filename for w in record] == [__file__]  # the caller's line, not lemon's insides
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = lemon.expand(small, hidden_size=64, backend="auto", progress=False)
    for p, q, r in zip(reference.parameters(), fallback.parameters(), auto.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)


def test_import_lemon_is_light():
    code = "import sys, lemon; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_demo_runs_and_reports_lossless(capsys):
    from lemon.cli import main

    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    from lemon.architectures import FAMILIES

    for family in ("bert", "vit", "gpt2", "llama", "qwen3", "gemma2", "gemma3", "olmo2", "phi3", "neox", "opt"):
        assert f"\n{family} " in out
    assert len(FAMILIES) == 11  # a new family goes into the demo too
    assert "lossless" in out
    assert "backends available here: reference, " in out and "C++ extension: built" in out


def test_info_says_what_runs_here(capsys):
    from lemon.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cpp" in out and "CPU loops for" in out and "CUDA executor" in out


def test_numpy_integers_are_accepted_as_sizes_and_positions():
    import numpy as np

    plan = lemon.expand_plan(make_model("gpt2"), hidden_size=np.int64(64), num_hidden_layers=np.int32(4),
                             layer_positions=np.array([1, 3]))
    assert plan.target_sizes["hidden_size"] == 64
    assert plan.layers == [(0, False), (0, True), (1, False), (1, True)]


def test_verify_stays_callable_after_importing_its_module():
    import lemon.verification  # noqa: F401  (used to replace the function lemon.verify)

    small = make_model("gpt2")
    report = lemon.verify(small, lemon.expand(small, hidden_size=64, progress=False))
    assert report.output_relative <= 1e-5


def run_here(*args: str) -> subprocess.CompletedProcess:
    """Run a command in a fresh process that imports the lemon of this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)


def test_dir_lists_the_public_api_without_importing_torch():
    code = ("import sys, lemon; names = dir(lemon); "
            "print(all(n in names for n in ('expand', 'expand_plan', 'verify', 'available_backends', "
            "'__version__')), 'torch' in sys.modules)")
    out = run_here(sys.executable, "-c", code)
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_verify_refuses_swapped_arguments():
    small = make_model("llama")
    big = lemon.expand(small, num_hidden_layers=3, progress=False)
    with pytest.raises(ValueError, match=r"first argument must be the source \(smaller\) model") as err:
        lemon.verify(big, small)
    assert "num_hidden_layers 2 < 3" in str(err.value)
    assert lemon.verify(small, small).output_relative == 0  # same sizes (a reloaded copy): no swap to catch


def test_verify_names_the_worst_of_the_main_outputs():
    small = make_model("bert_base")  # last_hidden_state and pooler_output, both of hidden width
    report = lemon.verify(small, lemon.expand(small, hidden_size=64, progress=False))
    assert set(report.outputs) == {"last_hidden_state", "pooler_output"}
    assert report.output_name in report.outputs and report.output_relative == max(report.outputs.values())
    assert report.output_relative <= 1e-5 and report.output_name in str(report)


def test_verify_refuses_models_of_different_kinds():
    big = lemon.expand(make_model("gpt2"), hidden_size=64, progress=False)
    with pytest.raises(ValueError, match=r"different kinds \(model_type 'llama' and 'gpt2'\)"):
        lemon.verify(make_model("llama"), big)


def test_verify_runs_sixteen_bit_models_in_float32_and_gives_them_back_as_they_were():
    """An exact bf16 expansion (plain copies) is reported exact, not at bf16's arithmetic error;
    the models keep their bits, dtypes and ties. (Toy sizes compute the same bits in bf16: this
    needs a width and depth where bf16 arithmetic shows.)"""
    import transformers as T

    torch.manual_seed(0)
    small = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                                             tie_word_embeddings=True)).to(torch.bfloat16)
    big = lemon.expand(small, hidden_size=512, num_attention_heads=8, noise_std=0, progress=False)
    before = {name: t.clone() for name, t in itertools.chain(small.state_dict().items(), big.state_dict().items())}
    exact, as_stored = lemon.verify(small, big), lemon.verify(small, big, upcast=False)
    assert exact.output_relative <= 1e-5 < as_stored.output_relative, (exact, as_stored)
    after = dict(itertools.chain(small.state_dict().items(), big.state_dict().items()))
    assert all(after[n].dtype == torch.bfloat16 and torch.equal(after[n], t) for n, t in before.items())
    assert big.lm_head.weight is big.model.embed_tokens.weight


def test_verify_gives_a_sixteen_bit_model_back_as_it_was_when_the_cast_fails_halfway(monkeypatch):
    """E.g. out of memory after some tensors were cast to float32: those are cast back."""
    from lemon import verification

    small = make_model("llama").to(torch.bfloat16)
    big = lemon.expand(small, hidden_size=64, progress=False)
    before = {name: t.clone() for name, t in big.state_dict().items()}
    calls, to_float = [0], torch.Tensor.float

    def failing_float(tensor, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise torch.OutOfMemoryError("out of memory (a test)")
        return to_float(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "float", failing_float)
    with pytest.raises(torch.OutOfMemoryError):
        with verification._in_float32(big):
            pass
    monkeypatch.undo()
    assert calls[0] == 3 and all(t.dtype == torch.bfloat16 and torch.equal(t, before[n])
                                 for n, t in big.state_dict().items())


def test_verify_refuses_models_whose_inputs_differ_up_front():
    """A different vocabulary (or image size) is not an expansion: said up front, not reported as
    a failed comparison (or an index error in the embedding)."""
    import transformers as T

    from conftest import LLAMA_SIZES

    small = make_model("llama")
    other = T.LlamaForCausalLM(T.LlamaConfig(**{**LLAMA_SIZES, "vocab_size": 200, "hidden_size": 64}))
    with pytest.raises(ValueError, match=r"differ in what an expansion keeps \(vocab_size 97 and 200\)"):
        lemon.verify(small, other)


def test_verify_lines_up_layers_after_expansions_in_a_row():
    """small (2 layers) -> b1 (4, new layers at 1 and 3) -> b2 (6): verify finds the map to
    whichever model it is given, in place too, and refuses one b2 was not expanded from."""
    import transformers as T

    from conftest import LLAMA_SIZES

    small = make_model("llama")
    b1 = lemon.expand(small, num_hidden_layers=4, layer_positions=[1, 3], progress=False)
    b2 = lemon.expand(b1, num_hidden_layers=6, hidden_size=64, progress=False)
    assert b2.lemon_layers == b2.lemon_layer_maps[0] and len(b2.lemon_layers) == 6
    assert b2.lemon_layer_maps[1] == [(0, False), (0, True), (0, True), (1, False), (1, True), (1, True)]
    for source in (small, b1):
        report = lemon.verify(source, b2)
        assert len(report.layer_relative) == source.config.num_hidden_layers and max(report.layer_relative) <= 1e-5
    lemon.expand_(b1, hidden_size=64)  # in place: the maps carry over too
    assert max(lemon.verify(small, b1).layer_relative) <= 1e-5
    three = T.LlamaForCausalLM(T.LlamaConfig(**{**LLAMA_SIZES, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="lead back to models of 2 or 4 layers, not the small model's 3"):
        lemon.verify(three, b2)
    assert lemon.verify(b2, b2).layer_relative == [0.0] * 6  # a model against itself (a reloaded copy): layer to layer


def test_verify_takes_a_layer_map_of_indices_or_pairs():
    small = make_model("llama")  # 2 layers
    big = lemon.expand(small, num_hidden_layers=4, layer_positions=[2, 3], progress=False)  # 0 1 1' 1'
    assert big.lemon_layers == [(0, False), (1, False), (1, True), (1, True)]
    right = lemon.verify(small, big, layers=[0, 1, 1, 1])
    assert right.layer_relative == lemon.verify(small, big, layers=big.lemon_layers).layer_relative
    assert max(right.layer_relative) <= 1e-5
    assert max(lemon.verify(small, big, layers=[0, 0, 1, 1]).layer_relative) > 1e-2  # another map: layer 0 ends later
    with pytest.raises(ValueError, match=r"layers must give, per layer of the big model, the source layer.*'a'"):
        lemon.verify(small, big, layers=[0, 1, "a", 1])


def test_random_inputs_run_past_a_short_sliding_window():
    small = make_model("gemma2")
    assert small.config.sliding_window == 4
    assert lemon.verification.random_inputs(small)["input_ids"].shape[1] > 4
    small.config.sliding_window = 100
    assert lemon.verification.random_inputs(small)["input_ids"].shape[1] == 104


def test_each_submodule_keeps_its_own_train_or_eval_mode():
    small = make_model("llama").train()
    small.model.layers[0].eval()
    small.model.layers[1].self_attn.eval()
    small.lm_head.eval()
    big = lemon.expand(small, num_hidden_layers=4, progress=False)  # layers 0 0' 1 1'
    assert [layer.training for layer in big.model.layers] == [False, False, True, True]
    assert [layer.self_attn.training for layer in big.model.layers] == [False, False, False, False]
    assert [layer.mlp.down_proj.training for layer in big.model.layers] == [False, False, True, True]
    assert big.training and big.model.training and big.model.norm.training and not big.lm_head.training
    assert sum(not m.training for m in big.modules()) > sum(not m.training for m in small.modules())


def test_activation_checkpointing_carries_over_to_every_layer():
    """A user who trains with activation checkpointing keeps it on the larger model, inserted
    layers included (the flag and checkpoint function live on the modules, not in the config)."""
    small = make_model("llama").train()
    enable = getattr(small, "activation_checkpointing_enable", None) or small.gradient_checkpointing_enable
    enable()
    flags = {n: m.gradient_checkpointing for n, m in small.named_modules() if "gradient_checkpointing" in m.__dict__}
    assert flags and all(flags.values())
    big = lemon.expand(small, hidden_size=48, num_hidden_layers=4, progress=False)
    assert [layer.gradient_checkpointing for layer in big.model.layers] == [True] * 4
    ids = torch.randint(0, small.config.vocab_size, (2, 5))
    big(input_ids=ids, labels=ids).loss.backward()  # runs through the checkpoint function
    assert all(p.grad is not None for p in big.model.layers[3].parameters())


@pytest.mark.parametrize("in_place", [False, True])
def test_the_generation_config_carries_over(in_place, tmp_path):
    """What generate() reads (several EOS ids, as Llama 3 has; sampling settings) is the user's,
    not the default transformers derives from the model config."""
    from transformers import GenerationConfig

    small = make_model("llama")
    small.generation_config = GenerationConfig(eos_token_id=[2, 7], do_sample=True, temperature=0.6, top_p=0.9)
    wanted = small.generation_config.to_dict()
    expand = lemon.expand_ if in_place else lemon.expand
    big = expand(small, hidden_size=48, progress=False)
    assert big.generation_config.to_dict() == wanted
    if not in_place:
        assert big.generation_config is not small.generation_config  # a copy: editing one leaves the other
    big.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [2, 7] and saved["temperature"] == 0.6 and "_from_model_config" not in saved


def test_sixteen_bit_noise_is_said_to_cost_exactness_and_plain_copies_stay_exact():
    small = make_model("llama").to(torch.bfloat16)
    with pytest.warns(UserWarning, match="zero-sum noise no longer cancels") as caught:
        noisy = lemon.expand(small, hidden_size=64, progress=False)
    assert caught[0].filename == __file__  # it names the user's line
    assert any("16-bit" in note for note in lemon.expand_plan(small, hidden_size=64).notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = lemon.expand(small, hidden_size=64, noise_std=0, progress=False)
        lemon.expand(small.float(), hidden_size=64, progress=False)
        # deepening adds cancel-zero writers (d and -d round alike) and more KV heads are copies:
        # noise, and no note, because nothing is lost
        deeper = lemon.expand(small, num_hidden_layers=4, layer_positions=[1, 3], progress=False)
        more_kv = lemon.expand(small, num_key_value_heads=4, progress=False)
    assert not lemon.expand_plan(small, num_hidden_layers=5).notes
    noisy_error = verify(small.float(), noisy.float()).output_relative
    plain_error = verify(small.float(), plain.float()).output_relative
    assert plain_error <= 1e-5 < noisy_error, (plain_error, noisy_error)
    for exact in (deeper, more_kv):
        assert verify(small.float(), exact.float()).output_relative <= 1e-5


@pytest.mark.parametrize("family", ["gemma2", "olmo2"])
def test_sixteen_bit_deepening_with_sublayer_norms_is_exact_and_quiet(family):
    """Their inserted layers keep noisy copies as writers and add 0 through sublayer norms of
    gain 0: whatever the copies' rounding, nothing reaches the output."""
    small = make_model(family).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        deeper = lemon.expand(small, num_hidden_layers=4, progress=False)
    assert verify(small.float(), deeper.float()).output_relative <= 1e-5


@pytest.mark.parametrize("family,sizes", [
    ("llama", dict(hidden_size=48)), ("llama", dict(hidden_size=64)), ("llama", dict(hidden_size=96)),
    ("llama", dict(intermediate_size=192)), ("llama", dict(num_key_value_heads=4)), ("gpt2", dict(hidden_size=48)),
    ("gpt2", dict(hidden_size=64)), ("vit", dict(hidden_size=48)), ("bert", dict(hidden_size=64)),
    ("gemma2", dict(hidden_size=64)), ("qwen3", dict(num_attention_heads=8, num_key_value_heads=4)),
])
def test_the_sixteen_bit_note_comes_exactly_when_plain_copies_are_not_exact(family, sizes):
    """Without noise, 16-bit weights stay exact where every value is a copy or a power-of-two
    scale of one (x2 widths, more KV heads), and not where a scale is another number (eta of a
    non-multiple width, 1/3 for three copies, Gemma's sqrt(D_S/D_T) embedding scale): the note
    comes in the second case only."""
    small = make_model(family).to(torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        big = lemon.expand(small, noise_std=0, progress=False, **sizes)
    noted = any("16-bit weights" in str(w.message) for w in caught)
    error = lemon.verify(small, big).output_relative
    assert noted == (error > 1e-5), (noted, error)


def test_plans_print_as_one_line_and_expand_plan_takes_expands_arguments():
    """A plan's repr describes its index maps instead of printing them (145 kB for a GPT-2-small
    shape); a call to expand turns into one to expand_plan as it is; a misspelt keyword is named
    against expand_plan, not an internal function."""
    small = make_model("llama")
    plan = lemon.expand_plan(small, hidden_size=64, num_hidden_layers=3, backend="cpp", progress=False)
    assert repr(plan) == ("ExpansionPlan(llama: hidden_size 32 -> 64, num_attention_heads 4 -> 8, num_hidden_layers "
                          "2 -> 3; 30 tensor plans, 1 inserted layer(s), seed 0, noise_std 0.02)")
    q = plan["model.layers.0.self_attn.q_proj.weight"]
    assert repr(q) == f"TensorPlan({q.describe()})" and "\n" not in repr(q) and len(repr(q)) < 300
    with pytest.raises(TypeError, match="expand_plan.. got an unexpected keyword argument 'hiden_size'"):
        lemon.expand_plan(small, hiden_size=64)


def test_ctrl_c_before_a_subcommand_handles_it_is_one_line():
    """E.g. while torch imports: the command says it was interrupted, exit status 130, no traceback."""
    code = ("import lemon.cli as cli\n"
            "def main(argv=None):\n    raise KeyboardInterrupt\n"
            "cli.main = main\ncli.entry()")
    out = run_here(sys.executable, "-c", code)
    assert out.returncode == 130 and out.stderr == "lemon: interrupted\n", out.stderr


def test_python_dash_m_lemon_and_the_version_flag():
    out = run_here(sys.executable, "-m", "lemon", "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"lemon {lemon.__version__}", out.stderr
    out = run_here(sys.executable, "-m", "lemon")  # no subcommand: usage on stderr, exit status 2
    assert out.returncode == 2 and "usage: lemon" in out.stderr


def test_the_lemon_command_prints_the_version():
    import shutil

    command = shutil.which("lemon")
    assert command is not None, "the lemon console script is missing: install as the README says"
    out = run_here(command, "--version")  # PYTHONPATH points it at this checkout's lemon
    assert out.returncode == 0 and out.stdout.strip() == f"lemon {lemon.__version__}", out.stderr
