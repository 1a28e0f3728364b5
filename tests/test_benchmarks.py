"""The benchmark scripts claim only what they wrote, and measure every backend built here."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

import lemon
from lemon import native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks", "bench_expand.py")
KERNELS = os.path.join(REPO, "benchmarks", "bench_kernels.py")
COMPARE = os.path.join(REPO, "benchmarks", "compare.py")
CHECKPOINT = os.path.join(REPO, "benchmarks", "bench_checkpoint.py")
GPU_SESSION = os.path.join(REPO, "benchmarks", "gpu_session.sh")
CPU_BACKENDS = ("reference", "cpp")  # what the scripts benchmark on a CPU (Triton's interpreter is not timed)


def _module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_backends() -> list[str]:
    """The backends available here that the scripts time on CPU tensors. The C++ extension is
    built wherever the tests run (CI builds it): a missing cpp fails, it is not skipped."""
    available = lemon.available_backends()
    assert "cpp" in available, (f"the C++ extension is not built ({native.extension()}): "
                                "the benchmarks could not measure backend 'cpp'")
    return [name for name in available if name in CPU_BACKENDS]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _run(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{os.path.basename(script)} failed:\n{proc.stdout}\n{proc.stderr}"


def test_no_chart_is_claimed_without_matplotlib(monkeypatch, tmp_path, capsys):
    bench = _module(BENCH, "bench_expand")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    chart = tmp_path / "bench_expand.png"
    assert bench.plot([], chart, "title") is False
    assert not chart.exists() and "no chart" in capsys.readouterr().err


def test_bench_expand_times_every_backend(tmp_path):
    backends = _cpu_backends()
    _run(BENCH, "--quick", "--cases", "0", "--repeats", "1", "--no-verify", "--out", str(tmp_path))
    record = json.loads((tmp_path / "bench_expand.json").read_text())
    assert record["machine"]["backend"] == record["backends"]
    assert set(backends) <= set(record["backends"])
    assert record["machine"]["native_build_info"].get("cpu_isa")
    (result,) = record["results"]
    for key in ("clone_s", "copy_s"):  # the ceilings: once per case
        assert result[key] and all(_positive(t) for t in result[key]), key
    for name in backends:
        this = result["backends"][name]
        assert _positive(this["expand_first_s"]), name
        for key in ("expand_s", "expand_noise0_s"):
            assert this[key] and all(_positive(t) for t in this[key]), (name, key)
        for key in ("expand_s", "expand_noise0_s", "ratio_clone", "ratio_clone_best", "ratio_copy", "gb_per_s"):
            assert _positive(this["summary"][key]), (name, key)
        assert this["peak_rss_bytes"] > 0
    assert (tmp_path / "bench_expand.png").exists()


def test_bench_kernels_times_every_backend_with_and_without_noise(tmp_path):
    backends = _cpu_backends()
    _run(KERNELS, "--quick", "--skip-model", "--out", str(tmp_path))
    record = json.loads((tmp_path / "bench_kernels_cpu.json").read_text())
    assert record["backends"] == backends
    rows = record["tensors"]
    for name in backends:
        for noise in (True, False):
            for dtype in ("bfloat16", "float32"):
                match = [r for r in rows if (r["backend"], r["noise"], r["dtype"]) == (name, noise, dtype)]
                assert match, (name, noise, dtype)
                for r in match:
                    for key in ("seconds", "clone_s", "copy_s", "ratio_clone", "ratio_copy", "gb_per_s"):
                        assert _positive(r[key]), (name, noise, dtype, key)
    assert {r["noise_std"] for r in rows if not r["noise"]} == {0.0}
    assert (tmp_path / "bench_kernels_cpu.png").exists()


def test_bench_checkpoint_measures_lemon_expand_against_cp(tmp_path):
    import transformers

    work = tmp_path / "work"
    # one run of each command: every child is a fresh Python importing torch and transformers
    _run(CHECKPOINT, "--quick", "--runs", "1", "--out", str(tmp_path), "--workdir", str(work), "--keep")
    record = json.loads((tmp_path / "bench_checkpoint.json").read_text())
    for key in ("machine", "config", "source", "runs", "summary", "ratios", "targets", "lemon_output",
                "mergekit", "drop_caches", "load"):
        assert key in record, key
    assert record["machine"]["cpu_model"] is not None and record["machine"]["torch"]
    assert record["mergekit"]["ran"] is False and record["mergekit"]["reason"]  # --quick: no mergekit
    assert record["source"]["largest_tensor"]["bytes"] > 0 and record["config"]["max_shard_bytes"] > 0
    assert record["config"]["device"] == "cpu" and record["config"]["lemon_command"][-4:] == [
        "--device", "cpu", "--backend", "auto"]
    for what in ("lemon_dry_run", "lemon", "cp"):
        runs = [r for r in record["runs"] if r["what"] == what]
        assert len(runs) == 1, what
        for r in runs:
            assert r["rc"] == 0 and r["peak_rss_bytes"] > 0 and r["sync_s"] >= 0, (what, r["log_tail"])
            assert _positive(r["wall_s"]), what
        this = record["summary"][what]
        assert _positive(this["wall_s"]) and _positive(this["wall_incl_sync_s"]), what
    lemon_out = record["summary"]["lemon"]["output_bytes"]
    assert lemon_out == record["summary"]["cp"]["output_bytes"] >= record["expected_output_bytes"]
    time_target, rss_target = record["targets"]["time"], record["targets"]["rss"]
    assert _positive(time_target["ratio"]) and isinstance(time_target["met"], bool)
    assert rss_target["limit_bytes"] == (rss_target["largest_tensor_bytes"] + 2 * rss_target["shard_bytes"])
    assert isinstance(rss_target["met"], bool)
    check = record["lemon_output"]
    assert check["ok"] and check["index"] and check["config"] and check["verify"]["passed"], check
    # lemon's output is a checkpoint transformers loads, of the expanded width
    dst = work / "expanded"
    model = transformers.AutoModelForCausalLM.from_pretrained(dst)
    assert model.config.hidden_size == 2 * record["config"]["source_sizes"]["hidden_size"]
    assert (tmp_path / "bench_checkpoint.png").exists()


def test_gpu_session_without_a_gpu_records_the_machine_and_stops(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script would run its whole session")
    out = tmp_path / "out"
    proc = subprocess.run(["bash", GPU_SESSION], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA GPU here" in proc.stdout and "REHEARSE=1" in proc.stdout
    env = (out / "env.log").read_text()
    assert f"torch {torch.__version__}" in env and "gpu None" in env
    assert not (out / "build.log").exists()  # nothing built or run past the check


def _result(name: str, expand_s: list[float], backends: dict | None = None) -> dict:
    result = {"case": {"name": name, "dtype": "float32"}, "contenders": 0, "contender": "python"}
    if backends is None:
        result["expand_s"] = expand_s
    else:
        result["backends"] = {b: {"expand_s": times} for b, times in backends.items()}
    return result


def test_compare_reads_both_formats(tmp_path, capsys):
    compare = _module(COMPARE, "compare")
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    after.mkdir()
    old = {"machine": {"backend": "reference"}, "results": [_result("case", [4.0, 4.0, 4.0])]}
    new = {"machine": {"backend": ["reference", "cpp"]},
           "results": [_result("case", [], {"reference": [2.0], "cpp": [0.5, 0.5, 0.5]})]}
    (before / "bench_expand.json").write_text(json.dumps(old))
    (after / "bench_expand.json").write_text(json.dumps(new))

    key = ("case", "float32", "quiet")
    assert compare.load(before, "reference")[0] == {key: 4.0}
    assert compare.load(before, "cpp")[0] == {}  # an older file measured the reference only
    assert compare.load(before, "cpp", older_any=True) == ({key: 4.0}, {"reference"})
    assert compare.load(after, "cpp") == ({key: 0.5}, {"cpp"})
    assert compare.load(after, "reference")[0] == {key: 2.0}

    assert compare.main(["--before", str(before), "--after", str(after), "--backend", "cpp"]) == 0
    out = capsys.readouterr().out
    assert "backend reference" in out and "backend cpp" in out and "8.0x" in out
    assert compare.main(["--before", str(after), "--after", str(after), "--backend", "cpp",
                         "--before-backend", "reference"]) == 0
    assert "4.0x" in capsys.readouterr().out
