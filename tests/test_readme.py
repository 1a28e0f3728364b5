"""The README's headline example runs as written, on a small Llama (sizes scaled down)."""
from __future__ import annotations

import re
from pathlib import Path

import lemon

from conftest import make_model

README = Path(__file__).resolve().parent.parent / "README.md"
# the example's sizes -> sizes for the 32-wide, 4-head / 2-KV-head, 2-layer test Llama
SMALLER = {"hidden_size=1024": "hidden_size=64", "intermediate_size=4096": "intermediate_size=128",
           "num_attention_heads=16": "num_attention_heads=8", "num_key_value_heads=8": "num_key_value_heads=4",
           "num_hidden_layers=24": "num_hidden_layers=3"}


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python example"
    code = blocks[0]
    for size, small_size in SMALLER.items():
        assert size in code, f"the README example no longer says {size}: update SMALLER"
        code = code.replace(size, small_size)
    small = make_model("llama")
    monkeypatch.chdir(tmp_path)  # the example saves to ./big
    namespace = {"small": small}
    exec(compile(code, str(README), "exec"), namespace)
    big = namespace["big"]
    assert (big.config.hidden_size, big.config.num_key_value_heads, big.config.num_hidden_layers) == (64, 4, 3)
    assert (tmp_path / "big" / "config.json").exists()
    assert "max |delta|" in capsys.readouterr().out
    assert lemon.verify(small, big).output_relative <= 1e-5
