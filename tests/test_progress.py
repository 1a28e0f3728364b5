"""When lemon.expand shows a progress bar: long expansions by default, counted in elements."""
from __future__ import annotations

import pytest

import lemon
from lemon import progress
from lemon.progress import AUTO_THRESHOLD, elements_written, show_progress

from conftest import make_model


@pytest.mark.parametrize("argument,elements,environ,shown", [
    (None, AUTO_THRESHOLD // 10, {}, False),       # short expansions stay quiet
    (None, AUTO_THRESHOLD + 1, {}, True),          # long ones show a bar without being asked
    (False, 100 * AUTO_THRESHOLD, {}, False),      # False: never
    (True, 1, {}, True),                           # True: always
    (None, 100 * AUTO_THRESHOLD, {"LEMON_PROGRESS": "0"}, False),  # the environment turns it off
    (None, 1, {"LEMON_PROGRESS": "1"}, True),      # ... or on
    (True, 1, {"LEMON_PROGRESS": "0"}, True),      # an explicit argument wins over the environment
    (None, AUTO_THRESHOLD + 1, {"LEMON_PROGRESS": ""}, True),  # empty: automatic
])
def test_when_a_bar_is_shown(argument, elements, environ, shown):
    assert show_progress(argument, elements, environ) is shown


def test_work_is_counted_in_elements_so_one_big_embedding_counts_fully():
    small = make_model("llama")  # vocabulary 97: the embedding is one tensor among many
    plan = lemon.expand_plan(small, hidden_size=64)
    assert elements_written(plan) == sum(p.numel() for p in lemon.expand(small, hidden_size=64,
                                                                          progress=False).parameters())
    assert plan["model.embed_tokens.weight"].shape == (97, 64)


def test_default_shows_the_bar_on_stderr_above_the_threshold(monkeypatch, capsys):
    small = make_model("gpt2")
    monkeypatch.delenv("LEMON_PROGRESS", raising=False)
    lemon.expand(small, hidden_size=64)  # a few thousand elements: quiet
    assert "lemon: expanding" not in capsys.readouterr().err
    monkeypatch.setattr(progress, "AUTO_THRESHOLD", 1000)
    lemon.expand(small, hidden_size=64)
    assert "lemon: expanding" in capsys.readouterr().err
    monkeypatch.setenv("LEMON_PROGRESS", "0")
    lemon.expand(small, hidden_size=64)
    assert "lemon: expanding" not in capsys.readouterr().err


def test_progress_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match="progress must be True"):
        lemon.expand(make_model("gpt2"), hidden_size=64, progress="yes")
