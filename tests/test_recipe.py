"""The training demo's plumbing at a tiny size (seconds): the data, the runs, the expanded model
starting at the small one's loss, the FLOPs accounting, the JSON and the plot. The full run is
an example (README), not a test."""
from __future__ import annotations

import json

import pytest

from lemon import recipe
from lemon.cli import main


def test_the_corpus_is_the_standard_library_split_by_file():
    train, val = recipe.corpus()
    assert train.numel() > 1_000_000 and val.numel() > 100_000 and int(train.max()) < 256


def test_flops_to_reach_is_the_first_evaluation_at_or_below_the_target():
    curve = recipe.Curve("x", steps=[0, 10, 20], flops=[0.0, 5.0, 10.0], loss=[3.0, 2.0, 1.0])
    assert recipe.flops_to_reach(curve, 2.0) == 5.0 and recipe.flops_to_reach(curve, 0.5) is None


def test_the_demo_runs_end_to_end_at_a_tiny_size(tmp_path, capsys):
    assert main(["train-demo", "--steps", "40", "--small-steps", "40", "--size", "tiny", "--seeds", "0,1",
                 "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "train_demo.json").read_text())
    assert (tmp_path / "train_demo.png").is_file() or pytest.importorskip("matplotlib") is None
    assert [r["seed"] for r in record["results"]] == [0, 1]
    for result in record["results"]:
        assert result["expanded_step0_loss"] == pytest.approx(result["small_final_loss"], abs=1e-4)  # lossless
        runs = result["runs"]
        assert set(runs) == {"scratch", "lemon", "lemon_noise0", "lemon_scratch_schedule"}
        assert runs["lemon"]["steps"][-1] == 24 and runs["scratch"]["steps"][-1] == 40  # 0.6 of the schedule
        # the expanded model is the from-scratch architecture: a step costs the same FLOPs in every run
        per_step = runs["scratch"]["flops"][-1] / 40
        assert runs["lemon"]["flops"][-1] == pytest.approx(24 * per_step)
        assert result["small_flops"] < per_step * 40
        assert result["target_loss"] == runs["scratch"]["loss"][-1]
        assert result["summary"]["scratch"]["saved"] == 0.0
    out = capsys.readouterr().out
    assert "(lossless)" in out and "saved incl. small" in out
