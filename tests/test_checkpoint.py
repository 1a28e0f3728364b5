"""Checkpoint directories: `lemon expand SRC DST` / `lemon verify SRC DST` and their functions.

Every family round-trips through a sharded checkpoint made here (tiny max_shard_size): the output
loads with from_pretrained and equals lemon.expand of the loaded source, tensor for tensor. Each
refusal happens before anything is written, and the source's files never change.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lemon
from lemon import checkpoint as ckpt
from lemon import destination
from lemon import native, output_stream
from lemon.checkpoint import CheckpointError, expand_checkpoint, open_checkpoint, verify_checkpoint
from lemon.output_stream import OutputStream
from lemon.safetensors_stream import FormatError, ShardWriter, parse_size, read_header

from conftest import make_model

SIZES = {  # per family: width, FFN, heads and depth at once (BERT: x2, its post-LN needs multiples)
    "llama": dict(hidden_size=48, intermediate_size=96, num_attention_heads=6, num_key_value_heads=3,
                  num_hidden_layers=4),
    "gpt2": dict(hidden_size=48, intermediate_size=96, num_attention_heads=6, num_hidden_layers=3),
    "bert": dict(hidden_size=64, intermediate_size=128, num_attention_heads=8, num_hidden_layers=4),
    "vit": dict(hidden_size=48, intermediate_size=96, num_attention_heads=6, num_hidden_layers=3),
    "gpt_neox": dict(hidden_size=48, intermediate_size=96, num_attention_heads=6, num_hidden_layers=3),
    "opt": dict(hidden_size=64, intermediate_size=96, num_attention_heads=8, num_hidden_layers=3),
    "opt_post_ln": dict(hidden_size=64, num_attention_heads=8, num_hidden_layers=3),
    "phi3": dict(hidden_size=64, intermediate_size=96, num_attention_heads=8, num_key_value_heads=4,
                 num_hidden_layers=3),
    "qwen3": dict(hidden_size=48, intermediate_size=96, num_attention_heads=6, num_key_value_heads=3,
                  num_hidden_layers=3),
    "olmo2": dict(hidden_size=48, intermediate_size=96, num_attention_heads=8, num_key_value_heads=4,
                  num_hidden_layers=3),
    "gemma2": dict(hidden_size=48, intermediate_size=96, num_attention_heads=6, num_key_value_heads=3,
                   num_hidden_layers=3),
    "gemma3": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3),
}


def save(name: str, directory: Path, shard: str = "8KB", dtype=torch.float32) -> Path:
    model = make_model(name, dtype=dtype)
    model.save_pretrained(directory, max_shard_size=shard)
    (directory / "tokenizer.json").write_text('{"model": "not a real tokenizer"}')  # a small file to copy
    return directory


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def load(directory: Path, dtype=None):
    source = open_checkpoint(directory)
    kwargs = {} if dtype is None else {"dtype": dtype}
    return source.model_class.from_pretrained(directory, local_files_only=True, **kwargs).eval()


@pytest.mark.parametrize("family", list(SIZES))
def test_round_trip_equals_lemon_expand_of_the_loaded_source(family, tmp_path):
    src = save(family, tmp_path / "src")
    before = digest(src)
    dst = tmp_path / "dst"
    sizes = SIZES[family]
    result = expand_checkpoint(src, dst, **sizes, seed=3, max_shard_size="20KB", progress=False, log=lambda _: None)
    assert digest(src) == before  # the source is never modified

    files = sorted(p.name for p in dst.iterdir())
    assert result.shards > 1 and "model.safetensors.index.json" in files
    assert {"config.json", "tokenizer.json", "lemon_expansion.json"} <= set(files)
    big = load(dst)
    want = lemon.expand(load(src), **sizes, seed=3, progress=False)
    got = big.state_dict()
    for name, tensor in want.state_dict().items():
        assert torch.equal(got[name], tensor), name
    same = ("_name_or_path", "dtype")  # where it was loaded from; the dtype it was loaded in
    assert {k: v for k, v in big.config.to_dict().items() if k not in same} == \
        {k: v for k, v in want.config.to_dict().items() if k not in same}

    report, tolerance = verify_checkpoint(src, dst, log=lambda _: None)
    assert report.output_relative <= tolerance == 1e-5, report


def test_blocks_and_dtype_give_the_same_bits_as_the_whole_model(tmp_path):
    """Row blocks of a few hundred bytes (every tensor cut up) and --dtype bfloat16 (the source
    cast first, as from_pretrained(dtype=) does) against lemon.expand of the cast model."""
    src = save("llama", tmp_path / "src")
    dst = tmp_path / "dst"
    sizes = SIZES["llama"]
    expand_checkpoint(src, dst, **sizes, dtype="bfloat16", block_bytes=256, progress=False, log=lambda _: None)
    big = load(dst, dtype=torch.bfloat16)
    assert big.config.dtype == torch.bfloat16 and json.loads((dst / "config.json").read_text())["dtype"] == "bfloat16"
    want = lemon.expand(load(src).to(torch.bfloat16), **sizes, progress=False)
    got = big.state_dict()
    for name, tensor in want.state_dict().items():
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], tensor), name
    report, tolerance = verify_checkpoint(src, dst, log=lambda _: None)
    assert report.output_relative <= tolerance, report  # 16-bit weights: the default tolerance is 5e-2


def test_the_manifest_records_the_expansion(tmp_path):
    src = save("gpt2", tmp_path / "src")
    dst = tmp_path / "dst"
    expand_checkpoint(src, dst, hidden_size=48, num_attention_heads=6, num_hidden_layers=4, layer_positions=[1, 3],
                      seed=7, noise_std=0.01, progress=False, log=lambda _: None)
    manifest = json.loads((dst / "lemon_expansion.json").read_text())
    assert manifest["lemon_version"] == lemon.__version__ and manifest["seed"] == 7 and manifest["noise_std"] == 0.01
    assert manifest["source"] == str(src.resolve()) and manifest["model_class"] == "GPT2LMHeadModel"
    assert manifest["target_sizes"]["hidden_size"] == 48 and manifest["source_sizes"]["hidden_size"] == 32
    assert [(e["target_layer"], e["source_layer"], e["inserted"]) for e in manifest["layers"]] == [
        (0, 0, False), (1, 0, True), (2, 1, False), (3, 1, True)]
    plan = lemon.expand_plan(load(src), hidden_size=48, num_attention_heads=6, num_hidden_layers=4,
                             layer_positions=[1, 3], seed=7, noise_std=0.01)
    assert set(manifest["tensors"]) == set(plan.tensors)
    for name, entry in manifest["tensors"].items():
        mask = plan.tensors[name].new_mask().reshape(entry["view"])
        assert entry["new_elements"] == int(mask.sum()), name
        rows = torch.zeros(entry["view"][0], dtype=torch.bool)
        cols = torch.zeros(entry["view"][1], dtype=torch.bool)
        for a, b in entry["new_rows"]:
            rows[a:b] = True
        for a, b in entry["new_columns"]:
            cols[a:b] = True
        assert torch.equal(rows[:, None] | cols[None, :], mask), name  # the ranges give the mask back


def test_verify_lines_up_custom_layer_positions_after_a_reload(tmp_path):
    src = save("llama", tmp_path / "src")
    dst = tmp_path / "dst"
    expand_checkpoint(src, dst, num_hidden_layers=5, layer_positions=[2, 3, 4], progress=False, log=lambda _: None)
    lines = []
    report, _ = verify_checkpoint(src, dst, log=lines.append)
    assert len(report.layer_relative) == 2 and max(report.layer_relative) <= 1e-5, report  # both source layers
    assert "after source layer 0 -> target layer 0:" in lines[0] and "PASS" in lines[0]  # new layers follow layer 1
    (dst / "lemon_expansion.json").unlink()  # without the map, layers are assumed spread evenly: wrong here
    report, _ = verify_checkpoint(src, dst, log=lambda _: None)
    assert max(report.layer_max_abs) > 1e-2


def test_verify_lines_up_layers_after_checkpoint_expansions_in_a_row(tmp_path, capsys):
    """src (2 layers) -> mid (4) -> dst (6): dst's manifest keeps the map to src as well, so
    `lemon verify src dst` compares the right layers; a checkpoint dst was not expanded from is
    refused, naming the ones it was."""
    from lemon.cli import main

    src = save("llama", tmp_path / "src")
    mid, dst = tmp_path / "mid", tmp_path / "dst"
    expand_checkpoint(src, mid, num_hidden_layers=4, layer_positions=[1, 3], progress=False, log=lambda _: None)
    expand_checkpoint(mid, dst, num_hidden_layers=6, hidden_size=48, progress=False, log=lambda _: None)
    earlier = json.loads((dst / "lemon_expansion.json").read_text())["earlier_layer_maps"]
    assert [step["source"] for step in earlier] == [str(src.resolve())]
    assert [(e["source_layer"], e["inserted"]) for e in earlier[0]["layers"]] == [
        (0, False), (0, True), (0, True), (1, False), (1, True), (1, True)]
    for source in (src, mid):
        report, _ = verify_checkpoint(source, dst, log=lambda _: None)
        assert len(report.layer_relative) == load(source).config.num_hidden_layers
        assert max(report.layer_relative) <= 1e-5, report
    report, _ = verify_checkpoint(dst, dst, log=lambda _: None)  # a checkpoint against itself: layer to layer
    assert report.output_relative == 0 and len(report.layer_relative) == 6
    other = tmp_path / "other"
    expand_checkpoint(src, other, num_hidden_layers=3, progress=False, log=lambda _: None)
    assert main(["verify", str(other), str(dst)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"lemon verify: {dst / 'lemon_expansion.json'} says {dst} was expanded from {mid}, "
                              f"expanded from {src.resolve()}, and none of their layer maps leads back to the 3 "
                              f"layers of {other}"), message
    manifest = json.loads((mid / "lemon_expansion.json").read_text())  # edited: a map of another model
    manifest["layers"] = manifest["layers"][:1]
    (mid / "lemon_expansion.json").write_text(json.dumps(manifest))
    lines = []
    expand_checkpoint(mid, tmp_path / "again", num_hidden_layers=6, progress=False, log=lines.append)
    assert any("does not describe this checkpoint's 4 layers" in line for line in lines), lines
    assert json.loads((tmp_path / "again" / "lemon_expansion.json").read_text())["earlier_layer_maps"] == []
    del manifest["layers"]  # and a manifest without a map: refused by name, not a KeyError
    (mid / "lemon_expansion.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="has no readable layer map"):
        verify_checkpoint(src, mid, log=lambda _: None)


def test_casting_a_float32_source_to_sixteen_bits_is_said_before_the_work(tmp_path):
    """--dtype bfloat16 on an fp32 source rounds its weights: verify will show it, so the command
    says so first (and the manifest keeps the note); a bf16 source cast to bf16 is not rounded."""
    src = save("llama", tmp_path / "src")
    lines = []
    expand_checkpoint(src, tmp_path / "cast", num_hidden_layers=3, dtype="bfloat16", progress=False, log=lines.append)
    said = [line for line in lines if "rounds the source's float32 weights to 16 bits" in line]
    assert len(said) == 1 and said[0].startswith("lemon: note: dtype bfloat16"), lines
    assert said[0].removeprefix("lemon: note: ") in json.loads((tmp_path / "cast" / "lemon_expansion.json").read_text())["notes"]
    report, tolerance = verify_checkpoint(src, tmp_path / "cast", log=lambda _: None)
    assert 1e-5 < report.output_relative <= tolerance  # what the note announced, within the 16-bit tolerance
    bf16 = save("llama", tmp_path / "bf16", dtype=torch.bfloat16)
    lines = []
    expand_checkpoint(bf16, tmp_path / "same", num_hidden_layers=3, dtype="bfloat16", progress=False, log=lines.append)
    assert not any("rounds the source" in line for line in lines), lines


def test_a_sixteen_bit_output_with_noise_is_said_to_cost_exactness(tmp_path):
    src = save("llama", tmp_path / "src", dtype=torch.bfloat16)
    lines = []
    expand_checkpoint(src, tmp_path / "bf16", hidden_size=64, progress=False, log=lines.append)
    assert any("zero-sum noise no longer cancels" in line for line in lines), lines
    assert any("16-bit" in note for note in json.loads((tmp_path / "bf16" / "lemon_expansion.json").read_text())["notes"])
    for name, kwargs in (("fp32", dict(dtype="float32", hidden_size=64)), ("copies", dict(noise_std=0, hidden_size=64)),
                         ("deeper", dict(num_hidden_layers=5))):  # cancel-zero writers: exact in 16 bits
        lines = []
        expand_checkpoint(src, tmp_path / name, progress=False, log=lines.append, **kwargs)
        assert not any("16-bit weights" in line for line in lines), (name, lines)


def test_verify_prints_its_report_without_transformers_loading_bars(tmp_path, capfd):
    from transformers.utils import logging as transformers_logging

    src = save("gpt2", tmp_path / "src")
    dst = tmp_path / "dst"
    expand_checkpoint(src, dst, hidden_size=48, num_attention_heads=6, progress=False, log=lambda _: None)
    capfd.readouterr()
    transformers_logging.enable_progress_bar()
    verify_checkpoint(src, dst)
    out, err = capfd.readouterr()
    assert "PASS" in out and "Loading weights" not in out + err, (out, err)
    assert transformers_logging.is_progress_bar_enabled()  # as it was before


def test_verify_takes_token_ids_and_fails_past_its_tolerance(tmp_path):
    src = save("gpt2", tmp_path / "src")
    dst = tmp_path / "dst"
    expand_checkpoint(src, dst, hidden_size=64, num_attention_heads=8, progress=False, log=lambda _: None)
    report, _ = verify_checkpoint(src, dst, token_ids=[1, 5, 9, 2], log=lambda _: None)
    assert 0 < report.output_relative <= 1e-5
    with pytest.raises(CheckpointError, match="token ids must be"):
        verify_checkpoint(src, dst, token_ids=[1, 500], log=lambda _: None)
    run = cli("verify", src, dst, "--tolerance", "0")
    assert run.returncode == 1 and "FAIL" in run.stdout


def test_verify_refuses_swapped_directories_before_loading_weights(tmp_path, monkeypatch):
    src = save("llama", tmp_path / "src")
    dst = tmp_path / "dst"
    expand_checkpoint(src, dst, hidden_size=48, progress=False, log=lambda _: None)
    loads = []
    monkeypatch.setattr(type(load(src)), "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a)))
    with pytest.raises(ValueError, match=r"second is smaller \(hidden_size 32 < 48.*lemon verify SRC_DIR DST_DIR"):
        verify_checkpoint(dst, src, log=lambda _: None)
    assert loads == []
    run = cli("verify", dst, src)
    assert run.returncode == 2 and "call lemon verify SRC_DIR DST_DIR" in run.stderr, run.stderr


def test_verify_runs_an_image_through_the_source_image_processor(tmp_path):
    Image = pytest.importorskip("PIL.Image", reason="Pillow is needed to read an image")
    from transformers import ViTImageProcessorPil

    src = save("vit", tmp_path / "src")
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(src)
    dst = tmp_path / "dst"
    expand_checkpoint(src, dst, hidden_size=64, num_attention_heads=8, progress=False, log=lambda _: None)
    assert (dst / "preprocessor_config.json").is_file()  # copied with the other small files
    picture = tmp_path / "picture.png"
    Image.fromarray((torch.rand(20, 24, 3) * 255).to(torch.uint8).numpy()).save(picture)
    lines = []
    report, tolerance = verify_checkpoint(src, dst, image=str(picture), log=lines.append)
    assert report.output_relative <= tolerance and f"the image {picture}" in lines[0]
    with pytest.raises(CheckpointError, match=r"missing\.png does not exist .*: pass the path of an image file"):
        verify_checkpoint(src, dst, image=str(tmp_path / "missing.png"), log=lambda _: None)
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(CheckpointError, match=r"cannot read .*notes\.png as an image .*: pass a PNG, JPEG"):
        verify_checkpoint(src, dst, image=str(tmp_path / "notes.png"), log=lambda _: None)
    (src / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="has no preprocessor_config.json, .*processor.save_pretrained"):
        verify_checkpoint(src, dst, image=str(picture), log=lambda _: None)


def test_device_cuda_without_a_gpu_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal cannot happen")
    src = save("llama", tmp_path / "src")
    with pytest.raises(CheckpointError, match="sees no CUDA GPU"):
        expand_checkpoint(src, tmp_path / "dst", hidden_size=48, device="cuda", progress=False, log=lambda _: None)
    assert not (tmp_path / "dst").exists()


GPU_BACKENDS = ["auto", "triton"] + (["cuda"] if native.has_cuda_executor() else [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (without one, the refusal above)")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_device_cuda_writes_the_bits_of_device_cpu(backend, tmp_path):
    """--device cuda: the same files' tensors as on the CPU, also in row blocks and in bf16."""
    src = save("llama", tmp_path / "src")
    sizes = SIZES["llama"]
    for dtype in ("float32", "bfloat16"):
        cpu, gpu = tmp_path / f"cpu-{dtype}", tmp_path / f"gpu-{dtype}"
        expand_checkpoint(src, cpu, **sizes, dtype=dtype, progress=False, log=lambda _: None)
        expand_checkpoint(src, gpu, **sizes, dtype=dtype, device="cuda", backend=backend, block_bytes=256,
                          progress=False, log=lambda _: None)
        want, got = load(cpu).state_dict(), load(gpu).state_dict()
        for name, tensor in want.items():
            assert torch.equal(got[name], tensor), (dtype, name)


def test_an_existing_destination_is_replaced_only_with_overwrite_and_only_when_complete(tmp_path):
    src = save("llama", tmp_path / "src")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("the user's")
    with pytest.raises(CheckpointError, match="not empty: pass overwrite=True"):
        expand_checkpoint(src, dst, hidden_size=48, progress=False, log=lambda _: None)
    assert (dst / "keep.txt").read_text() == "the user's"
    expand_checkpoint(src, dst, hidden_size=48, overwrite=True, progress=False, log=lambda _: None)
    assert not (dst / "keep.txt").exists() and (dst / "config.json").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir makes it, not the temporary's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no temporary left beside it


def test_an_interrupted_run_leaves_no_checkpoint_and_keeps_the_old_one(tmp_path, monkeypatch):
    src = save("llama", tmp_path / "src")
    dst = tmp_path / "dst"
    calls = []
    submit = OutputStream.submit

    def interrupted(self, name, nbytes):
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the weights
        return submit(self, name, nbytes)

    monkeypatch.setattr(OutputStream, "submit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        expand_checkpoint(src, dst, hidden_size=48, max_shard_size="8KB", progress=False, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no DST, no temporary directory

    dst.mkdir()
    (dst / "previous.txt").write_text("an earlier expansion")
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        expand_checkpoint(src, dst, hidden_size=48, overwrite=True, progress=False, log=lambda _: None)
    assert [p.name for p in dst.iterdir()] == ["previous.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_a_failed_write_on_the_writer_thread_is_raised_and_cleaned_up(tmp_path, monkeypatch, capsys):
    """A full disk: cleaned up, and said in one line naming the file, the space needed and free
    (no traceback), exit status 2."""
    from lemon.cli import main

    src = save("llama", tmp_path / "src")
    write = os.pwrite
    calls = []

    def disk_full(fd, data, offset):
        calls.append(offset)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return write(fd, data, offset)

    monkeypatch.setattr(output_stream.os, "pwrite", disk_full)  # the writer threads' one system call
    with pytest.raises(ckpt.DiskFullError, match=r"filled up while writing model\.safetensors \(No space left on "
                                                 r"device\): the expanded checkpoint needs [\d.]+ kB, and [\d.]+ \w+B "
                                                 r"was free"):
        expand_checkpoint(src, tmp_path / "dst", hidden_size=48, block_bytes=512, progress=False, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"] and len(calls) == 3  # nothing written after it
    calls.clear()
    assert main(["expand", str(src), str(tmp_path / "dst"), "--hidden-size", "48", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lemon expand: the disk of ") and "Traceback" not in "".join(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_destination_given_as_dot_is_written_from_its_parent(tmp_path, monkeypatch):
    src = save("gpt2", tmp_path / "src")
    (tmp_path / "big").mkdir()
    monkeypatch.chdir(tmp_path / "big")
    expand_checkpoint(src, ".", hidden_size=48, num_attention_heads=6, progress=False, log=lambda _: None)
    assert load(tmp_path / "big").config.hidden_size == 48
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "src"]  # no temporary left beside it


def test_a_dangling_link_in_the_source_is_refused_before_writing(tmp_path):
    src = save("gpt2", tmp_path / "src")
    (src / "tok").mkdir()
    (src / "tok" / "broken.json").symlink_to(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"broken\.json is a symbolic link to .*nowhere, which does not exist"):
        expand_checkpoint(src, tmp_path / "dst", hidden_size=48, num_attention_heads=6, progress=False,
                          log=lambda _: None)
    assert not (tmp_path / "dst").exists()


def test_the_command_prints_lemons_warnings_as_one_plain_line(tmp_path):
    src = save("gpt2", tmp_path / "src")
    done = subprocess.run([sys.executable, "-m", "lemon", "expand", str(src), str(tmp_path / "dst"),
                           "--hidden-size", "48", "--num-attention-heads", "6", "--backend", "triton"],
                          capture_output=True, text=True, env={**os.environ, "LEMON_PROGRESS": "0", "TRITON_INTERPRET": "0"})  # Triton: not here
    assert done.returncode == 0, done.stderr
    fallback = [line for line in done.stderr.splitlines() if "backend 'triton' is not available" in line]
    assert len(fallback) == 1 and fallback[0].startswith("lemon: backend"), done.stderr  # no file:line, no source


def test_ctrl_c_is_one_line_and_exit_status_130(tmp_path, monkeypatch, capsys):
    from lemon.cli import main

    src = save("llama", tmp_path / "src")

    def interrupted(self, name, nbytes):
        raise KeyboardInterrupt

    monkeypatch.setattr(OutputStream, "submit", interrupted)
    handlers = [signal.getsignal(number) for number in destination.TERMINATING]
    assert main(["expand", str(src), str(tmp_path / "dst"), "--hidden-size", "48", "--no-progress"]) == 130
    assert [signal.getsignal(number) for number in destination.TERMINATING] == handlers  # SIGTERM's back as it was
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"lemon expand: interrupted; nothing was written to {tmp_path / 'dst'} (temporary files removed)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


KILLED_RUN = ("import sys, lemon.output_stream as s, os, signal\n"
              "submit = s.OutputStream.submit\n"
              "def kill(self, name, nbytes):\n"
              "    submit(self, name, nbytes)\n"
              "    if name is not None: self.drain(); os.kill(os.getpid(), signal.{signal})\n"
              "s.OutputStream.submit = kill\n"
              "from lemon.cli import main\n"
              "sys.exit(main(['expand', {src!r}, {dst!r}, '--hidden-size', '48']))\n")


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    """`kill` (SIGTERM) in the middle of the weights: the temporary directory is removed, one line
    says so, and the exit status is 128 + 15."""
    src = save("llama", tmp_path / "src")
    dst = tmp_path / "dst"
    code = KILLED_RUN.format(signal="SIGTERM", src=str(src), dst=str(dst))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 143, run.stderr
    assert run.stderr.strip().splitlines()[-1] == \
        f"lemon expand: terminated by SIGTERM; nothing was written to {dst} (temporary files removed)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_killed_run_leaves_nothing_under_the_destination_and_the_next_run_removes_its_temporary(tmp_path):
    """SIGKILL (no cleanup runs): the destination does not exist; only a hidden temporary does,
    marked with its writer's pid. The next run to the same destination removes it (its writer is
    dead), but keeps one whose writer is alive and one with no mark."""
    src = save("llama", tmp_path / "src")
    dst = tmp_path / "dst"
    code = KILLED_RUN.format(signal="SIGKILL", src=str(src), dst=str(dst))
    killed = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = killed.communicate()
    assert killed.returncode == -9, err
    assert not dst.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name != "src"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".dst.lemon-")
    assert json.loads((leftovers[0] / destination.WRITER).read_text())["pid"] == killed.pid
    live, unknown = tmp_path / ".dst.lemon-live", tmp_path / ".dst.lemon-old-unknown"
    live.mkdir()
    destination._mark_writer(live, dst)  # this process: alive
    unknown.mkdir()
    lines = []
    expand_checkpoint(src, dst, hidden_size=48, progress=False, log=lines.append)
    assert not leftovers[0].exists() and live.is_dir() and unknown.is_dir()
    assert lines[0] == (f"lemon: removed 1 temporary directory of {dst} left by a killed run: "
                        f"{leftovers[0].name} (pid {killed.pid})")
    assert not (dst / destination.WRITER).exists()  # the mark stays out of the checkpoint


def test_a_destination_that_appears_during_the_run_is_kept_and_so_is_the_expansion(tmp_path, monkeypatch, capsys):
    """Without --overwrite, a destination made while lemon wrote (another run, another program)
    is left as it is; the finished expansion stays in its temporary directory, named in the
    message, exit status 2. With --overwrite it is replaced, as one there from the start."""
    from lemon.cli import main

    src = save("llama", tmp_path / "src")
    dst = tmp_path / "dst"
    write_other_files = ckpt._write_other_files

    def and_someone_else_writes_dst(temporary, *args):
        write_other_files(temporary, *args)
        dst.mkdir(exist_ok=True)
        (dst / "theirs.txt").write_text("another run's")

    monkeypatch.setattr(ckpt, "_write_other_files", and_someone_else_writes_dst)
    assert main(["expand", str(src), str(dst), "--hidden-size", "48", "--no-progress"]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".dst.lemon-")]
    assert len(kept) == 1 and "appeared while the expansion was written" in message and str(kept[0]) in message
    assert [p.name for p in dst.iterdir()] == ["theirs.txt"]
    assert load(kept[0]).config.hidden_size == 48 and not (kept[0] / destination.WRITER).exists()  # complete, unmarked
    assert main(["expand", str(src), str(dst), "--hidden-size", "48", "--no-progress"]) == 2  # there from the start
    assert "not empty" in capsys.readouterr().err and kept[0].is_dir()  # and the kept one is not stale
    expand_checkpoint(src, dst, hidden_size=48, overwrite=True, progress=False, log=lambda _: None)
    assert (dst / "config.json").is_file() and not (dst / "theirs.txt").exists()


def test_folders_and_files_with_weights_of_the_source_are_left_out(tmp_path):
    """Meta's `original/` (consolidated.00.pth + params.json: the small model in another layout)
    and a stray weight file are not copied, nor hidden folders (a clone's .git/, a Hub download's
    .cache/), and one line says so; other folders and hidden files (.gitattributes) are."""
    src = save("llama", tmp_path / "src")
    (src / "original").mkdir()
    (src / "original" / "consolidated.00.pth").write_bytes(b"weights of the small model")
    (src / "original" / "params.json").write_text('{"dim": 32}')
    (src / "docs" / "img").mkdir(parents=True)
    (src / "docs" / "img" / "logo.svg").write_text("<svg/>")
    (src / "flax_model.msgpack").write_bytes(b"weights")
    (src / "params.json").write_text('{"dim": 32}')  # Mistral's layout: the native config at the top level
    (src / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (src / ".cache" / "huggingface").mkdir(parents=True)
    (src / ".cache" / "huggingface" / "model.safetensors.metadata").write_text("etag of the small model's file")
    dst = tmp_path / "dst"
    lines = []
    expand_checkpoint(src, dst, hidden_size=48, progress=False, log=lines.append)
    assert (dst / "docs" / "img" / "logo.svg").read_text() == "<svg/>" and (dst / "tokenizer.json").is_file()
    assert (dst / ".gitattributes").read_text() == (src / ".gitattributes").read_text()
    assert not (dst / "original").exists() and not (dst / "flax_model.msgpack").exists()
    assert not (dst / ".cache").exists()
    assert not (dst / "params.json").exists()
    assert lines[0] == ("lemon: left out of the output: flax_model.msgpack, original/, params.json (the source's weights in "
                        "another format or layout, in the source's sizes: they would not match the expanded model); "
                        ".cache/ (hidden folders: version control or download records of the source's files)")


def test_a_params_json_is_left_out_only_beside_weights_in_another_layout(tmp_path):
    """Without other weights beside it, a params.json is the user's (training settings, say)."""
    src = save("llama", tmp_path / "src")
    (src / "params.json").write_text('{"lr": 3e-4}')
    (src / "training").mkdir()
    (src / "training" / "params.json").write_text('{"lr": 3e-4}')
    dst = tmp_path / "dst"
    lines = []
    expand_checkpoint(src, dst, hidden_size=48, progress=False, log=lines.append)
    assert (dst / "params.json").is_file() and (dst / "training" / "params.json").is_file()
    assert not any("left out" in line for line in lines), lines


def test_command_line_messages_name_flags_and_sizes_readably(tmp_path, monkeypatch, capsys):
    """`nothing to expand` names the flags, not Python keywords; the dry run gives sizes to three
    figures and leaves out the KV heads of a family without them (GPT-2)."""
    from lemon.cli import main

    src = save("gpt2", tmp_path / "src")
    assert main(["expand", str(src), str(tmp_path / "dst")]) == 2
    message = capsys.readouterr().err.strip()
    assert "among the flags --hidden-size, --intermediate-size" in message and "hidden_size" not in message, message
    assert "key-value" not in message, message  # GPT-2 has no KV-head count of its own
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda _: usage(10**12, 10**12, 21_234_567))
    assert main(["expand", str(src), str(tmp_path / "dst"), "--hidden-size", "64", "--num-attention-heads", "8",
                 "--dry-run"]) == 0
    dry = capsys.readouterr().err
    assert "hidden_size 32 -> 64, num_attention_heads 4 -> 8" in dry and "num_key_value_heads" not in dry, dry
    assert "21.2 MB free at the destination" in dry, dry
    assert main(["expand", str(src), str(tmp_path / "dst"), "--num-hidden-layers", "10", "--layer-positions",
                 "1,2,3,4,5,6,8,9", "--dry-run"]) == 0
    assert "  layers: 10 (8 inserted at 1-6, 8-9)" in capsys.readouterr().err.splitlines()  # runs, not every index


def test_command_line_refusals_are_said_in_flags(tmp_path, capsys):
    """The Python API's refusals name its keywords; the command says the same in its flags, with
    one `lemon expand:` prefix."""
    from lemon.cli import main

    src, vit = save("gpt2", tmp_path / "src"), save("vit", tmp_path / "vit")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("the user's")
    named = tmp_path / "hidden_size" / "seed=3"  # a path that holds keywords stays as it is
    named.mkdir(parents=True)
    (named / "keep.txt").write_text("the user's")
    big = tmp_path / "big"
    expand_checkpoint(src, big, hidden_size=64, progress=False, log=lambda _: None)
    cases = [
        (["expand", src, tmp_path / "full", "--hidden-size", "64"], "lemon expand: the destination",
         "pass --overwrite to replace it"),
        (["expand", src, named, "--hidden-size", "64"], f"lemon expand: the destination {named} is not empty",
         "pass --overwrite"),
        (["verify", big, src], "lemon verify: the first argument must be the source",  # sizes, not expand's flags
         "(hidden_size 32 < 64"),
        (["expand", src, tmp_path / "dst", "--hidden-size", "64", "--max-shard-size", "5XB"],
         "lemon expand: --max-shard-size: cannot read the size '5XB'", ""),
        (["verify", src, src, "--image", tmp_path / "cat.png"], "lemon verify: --image is for vision models",
         "pass --token-ids instead"),
        (["verify", vit, vit, "--token-ids", "1,2"], "lemon verify: --token-ids are for text models",
         "pass --image instead"),
        (["verify", src, src, "--tolerance", "-1"], "lemon verify: --tolerance -1.0: the tolerance must be 0 or more",
         "e.g. 1e-5"),
    ]
    if "cpp" in lemon.available_backends() and not native.build_info()["cuda"]:
        cases.append((["expand", src, tmp_path / "dst", "--hidden-size", "64", "--backend", "cuda"],
                      "lemon expand: backend 'cuda' is not in this build", ""))
    for argv, start, fix in cases:
        assert main([str(a) for a in argv]) == 2
        message = capsys.readouterr().err.strip().splitlines()[-1]
        assert message.startswith(start) and fix in message, message
        if fix and argv[0] == "expand":  # (the build hint names LEMON_NO_EXT=1, an environment variable)
            assert "=" not in message.replace(str(named), "") and "_" not in message.replace(str(named), "").replace(
                str(tmp_path), ""), message
    assert (tmp_path / "full" / "keep.txt").read_text() == "the user's" and not (tmp_path / "dst").exists()


def test_verify_refuses_inputs_of_the_other_kind_up_front(tmp_path):
    vit, llama = save("vit", tmp_path / "vit"), save("llama", tmp_path / "llama")
    with pytest.raises(CheckpointError, match="token_ids= are for text models; .* is a vision model .*: pass "
                                              "image= instead"):
        verify_checkpoint(vit, vit, token_ids=[1, 2], log=lambda _: None)
    with pytest.raises(CheckpointError, match="image= is for vision models; .* is a text model .*: pass "
                                              "token_ids= instead"):
        verify_checkpoint(llama, llama, image=str(tmp_path / "cat.png"), log=lambda _: None)


def test_verify_judges_a_float32_expansion_of_a_bf16_source_by_float32_round_off(tmp_path):
    """The expansion is made in fp32 from the source's exact values: its tolerance is fp32's."""
    src = save("llama", tmp_path / "src", dtype=torch.bfloat16)
    dst = tmp_path / "dst"
    expand_checkpoint(src, dst, **SIZES["llama"], dtype="float32", progress=False, log=lambda _: None)
    report, tolerance = verify_checkpoint(src, dst, log=lambda _: None)
    assert tolerance == 1e-5 and report.output_relative <= tolerance, report


def corrupt(directory: Path, how: str) -> None:
    shards = sorted(directory.glob("model-*.safetensors"))
    if how == "truncated":
        data = shards[1].read_bytes()
        shards[1].write_bytes(data[:-10])
    elif how == "garbage header":
        data = bytearray(shards[0].read_bytes())
        data[8:20] = b"not json!!!!"
        shards[0].write_bytes(bytes(data))
    elif how == "missing shard":
        shards[-1].unlink()
    elif how == "extra tensor":
        from safetensors.torch import save_file

        index = json.loads((directory / "model.safetensors.index.json").read_text())
        save_file({"model.extra.weight": torch.zeros(3)}, str(directory / "extra.safetensors"), metadata={"format": "pt"})
        index["weight_map"]["model.extra.weight"] = "extra.safetensors"
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    elif how == "wrong shape":
        config = json.loads((directory / "config.json").read_text())
        config["intermediate_size"] = 80
        (directory / "config.json").write_text(json.dumps(config))
    elif how == "unsupported family":
        config = json.loads((directory / "config.json").read_text())
        config["model_type"], config["architectures"] = "t5", ["T5ForConditionalGeneration"]
        (directory / "config.json").write_text(json.dumps(config))
    elif how == "pickle weights":
        for f in directory.glob("*.safetensors*"):
            f.unlink()
        (directory / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    elif how == "no config":
        (directory / "config.json").unlink()
    elif how == "index out of step":
        index = json.loads((directory / "model.safetensors.index.json").read_text())
        name = next(iter(index["weight_map"]))
        index["weight_map"][name] = next(f for f in set(index["weight_map"].values()) if f != index["weight_map"][name])
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("how,message", [
    ("truncated", r"model-00002-of-\d+\.safetensors: .*truncated"),
    ("garbage header", r"model-00001-of-\d+\.safetensors: the header is not valid JSON"),
    ("missing shard", r"names shard model-\d+-of-\d+\.safetensors, which is not in"),
    ("extra tensor", r"holds tensor model\.extra\.weight, which a LlamaForCausalLM built from config\.json does not"),
    ("wrong shape", r"tensor model\.layers\.0\.mlp\.\w+_proj\.weight has shape .* config\.json makes it"),
    ("unsupported family", r"config\.json: lemon cannot expand model_type 't5'"),
    ("pickle weights", r"pytorch_model\.bin: pickle files, which lemon never loads"
                       r".*t\.LlamaForCausalLM\.from_pretrained\(.*save_pretrained"),  # its own class: the head kept
    ("no config", r"has no config\.json"),
    ("index out of step", r"puts tensor .* but it is in"),
])
def test_bad_checkpoints_are_refused_naming_the_file_before_anything_is_written(how, message, tmp_path):
    src = save("llama", tmp_path / "src")
    corrupt(src, how)
    before = digest(src)
    dst = tmp_path / "dst"
    with pytest.raises(CheckpointError, match=message):
        expand_checkpoint(src, dst, hidden_size=48, progress=False, log=lambda _: None)
    assert not dst.exists() and digest(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("family,classes", [("gpt2", "GPT2LMHeadModel, GPT2Model"),
                                            ("vit", "ViTForImageClassification, ViTModel")])
def test_a_config_without_architectures_is_refused_with_its_own_familys_classes(family, classes, tmp_path):
    src = save(family, tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    del config["architectures"]
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf'no "architectures" field.*"architectures": \["{classes.split(",")[0]}"\] '
                                              rf"\(for {family}: one of {classes}\)"):
        expand_checkpoint(src, tmp_path / "dst", hidden_size=64, progress=False, log=lambda _: None)
    assert not (tmp_path / "dst").exists()


def test_sizes_are_checked_before_the_destination_and_a_dry_run_says_what_would_be_refused(tmp_path, capsys):
    """A wrong size is said first (the user fixes the request, then the destination); a dry run
    writes nothing, so a destination the real run refuses is a line of its report, in flags."""
    from lemon.cli import main

    src = save("llama", tmp_path / "src")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("the user's")
    (tmp_path / "file.txt").write_text("the user's")
    with pytest.raises(ValueError, match="hidden_size=20 is smaller"):
        expand_checkpoint(src, full, hidden_size=20, progress=False, log=lambda _: None)
    for dst, refusal in ((full, f"the destination {full} is not empty: pass --overwrite"),
                         (tmp_path / "file.txt" / "dst", f"{tmp_path / 'file.txt'} is a file, so the destination"),
                         (src / "big", "is inside the source")):
        assert main(["expand", str(src), str(dst), "--hidden-size", "48", "--dry-run"]) == 2  # a pre-check fails
        lines = capsys.readouterr().err.splitlines()
        assert lines[-2].startswith("  the real run would refuse: ") and refusal in lines[-2], lines
        assert lines[-1] == "  nothing was written"
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and (tmp_path / "file.txt").read_text() == "the user's"
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in save("llama", tmp_path / "again").iterdir())


def test_missing_folders_above_the_destination_are_made_and_removed_again_if_the_run_stops(tmp_path, monkeypatch):
    """As save_pretrained does; a run that stops takes the folders it made with it (not the
    ones that were there)."""
    src = save("llama", tmp_path / "src")
    (tmp_path / "runs").mkdir()
    dst = tmp_path / "runs" / "exp1" / "wide" / "big"
    assert not expand_checkpoint(src, dst, hidden_size=48, dry_run=True, progress=False, log=lambda _: None).refusal
    assert not (tmp_path / "runs" / "exp1").exists()  # a dry run makes nothing
    expand_checkpoint(src, dst, hidden_size=48, progress=False, log=lambda _: None)
    assert load(dst).config.hidden_size == 48
    failing = tmp_path / "runs" / "exp2" / "big"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "_write_weights", stop)
    with pytest.raises(KeyboardInterrupt):
        expand_checkpoint(src, failing, hidden_size=48, progress=False, log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["exp1"]


@pytest.mark.parametrize("where,kwargs,message", [
    ("same", {}, "is the source"),
    ("inside", {}, "is inside the source"),
    ("parent", {"overwrite": True}, "contains the source"),
    ("tmp", {"hidden_size": 20}, "hidden_size"),  # smaller than the source
    ("tmp", {"num_attention_heads": 5}, "num_attention_heads"),
    ("tmp", {"hidden_size": 48, "dtype": "int8"}, "dtype 'int8' is not one lemon writes"),
    ("tmp", {"hidden_size": 48, "max_shard_size": "5 potatoes"}, "cannot read the size"),
])
def test_bad_requests_are_refused_before_anything_is_written(where, kwargs, message, tmp_path):
    src = save("llama", tmp_path / "src")
    before = digest(src)
    dst = {"same": src, "inside": src / "big", "parent": tmp_path, "tmp": tmp_path / "dst"}[where]
    with pytest.raises((CheckpointError, ValueError), match=message):
        expand_checkpoint(src, dst, **{"hidden_size": 48, **kwargs}, progress=False, log=lambda _: None)
    assert digest(src) == before and not (tmp_path / "dst").exists() and not (src / "big").exists()
    assert sorted(p.name for p in src.iterdir()) == sorted(before)


def test_too_little_disk_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    src = save("llama", tmp_path / "src")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda _: usage(10**12, 10**12 - 1000, 1000))  # 1 kB free
    with pytest.raises(CheckpointError, match=r"has 1\.00 kB free, the expanded checkpoint needs 1\d\d kB"):
        expand_checkpoint(src, tmp_path / "dst", hidden_size=48, progress=False, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ------------------------------------------------------------------------------- the command line

def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lemon", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "LEMON_PROGRESS": "0", "TRITON_INTERPRET": "0"})  # Triton: not here


def test_the_command_line_expands_verifies_and_dry_runs(tmp_path):
    src = save("llama", tmp_path / "src")
    dst = tmp_path / "dst"
    dry = cli("expand", src, dst, "--hidden-size", "48", "--num-hidden-layers", "3", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stderr and "estimate" in dry.stderr and "nothing was written" in dry.stderr
    assert not dst.exists()
    run = cli("expand", src, dst, "--hidden-size", "48", "--num-hidden-layers", "3", "--layer-positions", "1",
              "--seed", "5", "--noise-std", "0.03", "--backend", "reference", "--max-shard-size", "10KB",
              "--dtype", "float32", "--progress")
    assert run.returncode == 0, run.stderr
    assert "lemon: expanding" in run.stderr and "GB/s" in run.stderr.splitlines()[-1]
    check = cli("verify", src, dst)
    assert check.returncode == 0 and "PASS" in check.stdout, check.stdout + check.stderr
    strict = cli("verify", src, dst, "--tolerance", "0")  # exits without the interpreter's teardown:
    assert strict.returncode == 1 and "FAIL" in strict.stdout  # the status and the output still come through
    want = lemon.expand(load(src), hidden_size=48, num_hidden_layers=3, layer_positions=[1], seed=5,
                        noise_std=0.03, backend="cpp", progress=False)
    got = load(dst).state_dict()
    assert all(torch.equal(got[n], t) for n, t in want.state_dict().items())  # reference wrote cpp's bits
    refused = cli("expand", src, dst, "--hidden-size", "48")
    assert refused.returncode == 2 and "not empty" in refused.stderr and "Traceback" not in refused.stderr


# ------------------------------------------------------------------------------- the file format

def test_shard_writer_streams_a_file_safetensors_reads(tmp_path):
    from safetensors.torch import load_file

    tensors = {"a": torch.randn(5, 7), "b": torch.randn(3).to(torch.bfloat16), "c": torch.empty(0, 4),
               "d": torch.arange(10, dtype=torch.int64)}
    writer = ShardWriter(tmp_path / "x.safetensors", [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()])
    writer.write("a", tensors["a"][:2])
    writer.write("a", tensors["a"][2:])
    writer.write("b", tensors["b"])
    with pytest.raises(RuntimeError, match="got bytes of a, expected d"):
        writer.write("a", tensors["a"])
    writer.write("d", tensors["d"])
    writer.close()
    loaded = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(loaded[n], t) for n, t in tensors.items())
    entries, metadata = read_header(tmp_path / "x.safetensors")
    assert metadata == {"format": "pt"} and entries["a"].shape == (5, 7)
    incomplete = ShardWriter(tmp_path / "y.safetensors", [("a", torch.float32, (2,))])
    with pytest.raises(RuntimeError, match="closed before a was written"):
        incomplete.close()
    (tmp_path / "z.safetensors").write_bytes(b"\x01")
    with pytest.raises(FormatError, match="too short"):
        read_header(tmp_path / "z.safetensors")


def test_sizes_are_read_like_transformers_reads_them():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("1000") == 1000 and parse_size(7) == 7
    with pytest.raises(ValueError, match="cannot read the size"):
        parse_size("lots")
