"""The benchmark script claims only what it wrote."""
from __future__ import annotations

import importlib.util
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench_expand.py")


def test_no_chart_is_claimed_without_matplotlib(monkeypatch, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_expand", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    chart = tmp_path / "bench_expand.png"
    assert bench.plot([], chart, "title") is False
    assert not chart.exists() and "no chart" in capsys.readouterr().err
