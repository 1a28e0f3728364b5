"""LEMON's learning-rate schedule (lemon.schedule): the from-scratch schedule's shape and peak,
compressed; its warm-up, peak, decay and length, as a lambda and as an LRScheduler."""
from __future__ import annotations

import math

import pytest
import torch

import lemon
from lemon.schedule import DEFAULT_LENGTH, LemonSchedule, lr_lambda, schedule_steps


def values(fn, steps):
    return [fn(s) for s in range(steps)]


def test_the_default_is_the_from_scratch_schedule_compressed_to_bert_s_132_of_220():
    assert DEFAULT_LENGTH == pytest.approx(0.6)
    assert schedule_steps(220_000) == 132_000 and schedule_steps(300, length=130 / 300) == 130
    fn = lr_lambda(1000)  # 600 steps, warm-up 12 (2%)
    v = values(fn, 700)
    assert v[0] == pytest.approx(1 / 12) and v[11] == pytest.approx(1.0)  # linear warm-up to the peak
    assert all(b > a for a, b in zip(v[:11], v[1:12]))
    assert all(b <= a for a, b in zip(v[11:600], v[12:601]))  # then decays, never rises
    assert v[599] == pytest.approx(0.0, abs=1e-4) and v[600:] == [0.0] * 100  # ends at `final`, stays there
    mid = 12 + (600 - 12) // 2
    assert v[mid] == pytest.approx(0.5, abs=1e-2)  # cosine: half the peak halfway through the decay


@pytest.mark.parametrize("decay,expected_mid", [("cosine", 0.5), ("linear", 0.5)])
def test_peak_final_and_decay_shape(decay, expected_mid):
    fn = lr_lambda(200, length=0.5, peak=2.0, warmup_steps=0, decay=decay, final=0.1)
    v = values(fn, 120)
    assert v[0] == pytest.approx(2.0)  # no warm-up: the peak at once, a multiple of the base rate
    assert v[50] == pytest.approx(2.0 * (0.1 + 0.9 * expected_mid))
    assert v[100:] == [pytest.approx(0.2)] * 20  # final = 10% of the peak
    quarter = 2.0 * (0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi / 4)) if decay == "cosine" else 0.75))
    assert v[25] == pytest.approx(quarter)


def test_as_an_lr_scheduler_it_drives_the_optimizer():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    schedule = LemonSchedule(optimizer, 100, length=0.5, warmup_steps=5)
    assert schedule.total_steps == 50
    fn = lr_lambda(100, length=0.5, warmup_steps=5)
    seen = []
    for step in range(60):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == [pytest.approx(0.1 * fn(s)) for s in range(60)]
    assert lemon.schedule.LemonSchedule is LemonSchedule  # reachable as lemon.schedule


@pytest.mark.parametrize("kwargs,message", [
    (dict(scratch_steps=0), "scratch_steps must be a positive integer"),
    (dict(scratch_steps=100, length=1.5), r"length must be a fraction"),
    (dict(scratch_steps=100, decay="step"), "decay must be one of"),
    (dict(scratch_steps=100, peak=0), "peak must be a positive"),
    (dict(scratch_steps=100, final=2), r"final must be a fraction"),
    (dict(scratch_steps=100, warmup_steps=60), r"warmup_steps must be an integer in \[0, 60\)"),
])
def test_bad_settings_are_refused_with_the_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lr_lambda(**kwargs)


def test_numpy_step_counts_and_fractions_are_taken_as_numbers():
    """Step counts often come from numpy arithmetic (a dataset's length): they work as their
    Python values do, and booleans are still refused."""
    np = pytest.importorskip("numpy")
    with_numpy = lr_lambda(np.int64(1000), length=np.float32(0.5), warmup_steps=np.int64(10), peak=np.float64(2.0))
    plain = lr_lambda(1000, length=float(np.float32(0.5)), warmup_steps=10, peak=2.0)
    assert [with_numpy(s) for s in range(0, 520, 7)] == [plain(s) for s in range(0, 520, 7)]
    assert type(with_numpy(3)) is float and schedule_steps(np.int64(220_000)) == 132_000
    with pytest.raises(ValueError, match="scratch_steps must be a positive integer"):
        lr_lambda(True)
