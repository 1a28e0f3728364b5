"""Checkpoints in older Hugging Face Hub layouts, which from_pretrained loads: `lemon expand` and
`lemon verify` take what it takes (names without the class's base_model_prefix, stale buffers
it drops), write the canonical layout save_pretrained writes, and refuse anything else unknown.

Each checkpoint is made by hand: a model saved, its safetensors rewritten the way the Hub's
files look (openai-community/gpt2: saved from GPT2Model with its causal masks; bert-base-uncased:
``position_ids`` stored, LayerNorm gains as gamma/beta).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lemon
from lemon.checkpoint import CheckpointError, expand_checkpoint, open_checkpoint, verify_checkpoint
from lemon.safetensors_stream import read_header

from conftest import make_model

SIZES = {"gpt2": dict(hidden_size=48, num_attention_heads=6, num_hidden_layers=3),
         "bert": dict(hidden_size=64, num_attention_heads=8, num_hidden_layers=4)}


def hub_gpt2(tensors: dict, config) -> dict:
    """As openai-community/gpt2 stores them: GPT2Model's names, with the causal masks."""
    out = {name.removeprefix("transformer."): t for name, t in tensors.items()}
    n = config.n_positions
    for layer in range(config.n_layer):
        out[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
    return out


def hub_bert(tensors: dict, config) -> dict:
    """As bert-base-uncased stores them: position_ids persistent, LayerNorm gains as gamma/beta."""
    out = {name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): t
           for name, t in tensors.items()}
    out["bert.embeddings.position_ids"] = torch.arange(config.max_position_embeddings).view(1, -1)
    return out


def hub_checkpoint(family: str, directory: Path, rewrite) -> Path:
    model = make_model(family)
    model.save_pretrained(directory)  # one file, as these Hub checkpoints are
    file = directory / "model.safetensors"
    save_file(rewrite(load_file(str(file)), model.config), str(file), metadata={"format": "pt"})
    return directory


def load(directory: Path):
    return open_checkpoint(directory).model_class.from_pretrained(directory, local_files_only=True).eval()


@pytest.mark.parametrize("family,rewrite,ignored", [
    ("gpt2", hub_gpt2, "h.0.attn.bias"),
    ("bert", hub_bert, "bert.embeddings.position_ids"),
])
def test_hub_layouts_expand_to_the_canonical_layout_and_verify(family, rewrite, ignored, tmp_path):
    src = hub_checkpoint(family, tmp_path / "src", rewrite)
    dst = tmp_path / "dst"
    lines = []
    expand_checkpoint(src, dst, **SIZES[family], seed=1, max_shard_size="40KB", progress=False, log=lines.append)
    assert lines[0].startswith("lemon: left out of the output: ") and ignored in lines[0], lines
    want = lemon.expand(load(src), **SIZES[family], seed=1, progress=False)
    stored = {name for file in dst.glob("*.safetensors") for name in read_header(file)[0]}
    canonical = set(want.state_dict()) - {"lm_head.weight", "cls.predictions.decoder.weight",
                                          "cls.predictions.decoder.bias"}  # tied: save_pretrained leaves them out
    assert stored == canonical, stored ^ canonical
    got = load(dst).state_dict()
    for name, tensor in want.state_dict().items():
        assert torch.equal(got[name], tensor), name
    report, tolerance = verify_checkpoint(src, dst, log=lambda _: None)
    assert report.output_relative <= tolerance == 1e-5, report


def test_a_tensor_transformers_would_not_drop_is_still_refused(tmp_path):
    """GPT-2's old `attn.masked_bias` is no rule's stale buffer in transformers 5 (it warns that the
    key is unexpected): refused by name, as any unknown tensor; the name without the prefix is found."""
    def with_masked_bias(tensors, config):
        return {**hub_gpt2(tensors, config), "h.0.attn.masked_bias": torch.tensor(-1e4)}

    src = hub_checkpoint("gpt2", tmp_path / "src", with_masked_bias)
    with pytest.raises(CheckpointError, match=r"holds tensor h\.0\.attn\.masked_bias, which a GPT2LMHeadModel"):
        expand_checkpoint(src, tmp_path / "dst", hidden_size=48, progress=False, log=lambda _: None)
