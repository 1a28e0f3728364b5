"""The counter-based noise generator (lemon.noise) is a specification.

Other executors (Triton, C++, CUDA) must reproduce it bit for bit, so the vectorized torch
paths (``centred``, ``centred_at``) are pinned against the plain-Python definition
(``centred_int``), which is itself checked against an independent lowbias32, and the
statistics of the two kinds of weight it makes are checked against the bounds a sound init
needs: a free weight ``c * free`` (triangular, bounded by sqrt(6) std) and a replica
``(c_a - c_b) * replica`` (four uniforms, bounded by 2 sqrt(3) std).
"""
from __future__ import annotations

import math
import random
import zlib

import numpy as np
import pytest
import torch

from lemon.noise import (
    CENTRED_OFFSET,
    CENTRED_SCALE,
    MASK32,
    centred,
    centred_at,
    centred_int,
    hash32,
    hash32_int,
    scales,
    tensor_key,
)

N_STATS = 1 << 20  # ~1e6 draws for the statistics
STD = 0.02
C_MAX = 65535  # |c| <= 65535


def _spec(key: int, counters: list[int]) -> torch.Tensor:
    return torch.tensor([centred_int(key, n) for n in counters], dtype=torch.int32)


def _awkward_counters() -> list[int]:
    rng = random.Random(1234)
    idx = list(range(0, 600))
    idx += [(1 << 31) + d for d in range(-100, 100)]  # the int32 sign bit of the low word
    idx += [(1 << 32) + d for d in range(-300, 300)]  # across the low/high word boundary
    idx += [(5 << 32) + d for d in range(-50, 50)]
    idx += [rng.randrange(0, 1 << 32) for _ in range(800)]
    idx += [rng.randrange(1 << 32, 1 << 48) for _ in range(800)]
    idx += [(1 << 48) + d for d in range(-50, 50)]
    idx += [rng.randrange(1 << 48, (1 << 63) - 1) for _ in range(400)]
    idx += [(1 << 40) + 7, (1 << 40) - 1, 1 << 40, (1 << 62) + 12345, (1 << 63) - 1, (1 << 63) - 2]
    idx += [(1 << 63) - 1 - d for d in range(100)]
    return idx


KEYS = [0, 1, MASK32, 0x80000000, tensor_key(0, "model.layers.0.mlp.down_proj.weight"),
        tensor_key(2**64 - 1, "lm_head.weight")]


def _low_word_int32(words: list[int]) -> torch.Tensor:
    """The low 32 bits of each counter as int32 (two's complement), as ``centred`` takes them."""
    return torch.tensor([w & MASK32 for w in words], dtype=torch.int64).to(torch.int32)


# ---------------------------------------------------------------- bit-exactness

@pytest.mark.parametrize("key", KEYS)
def test_centred_at_is_bit_identical_to_the_python_spec(key):
    counters = _awkward_counters()
    assert len(counters) > 3000
    got = centred_at(key, torch.tensor(counters, dtype=torch.int64))
    assert got.dtype == torch.int32
    assert torch.equal(got, _spec(key, counters))


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("high", [0, 1, 5, 0xFFFF, 1 << 16, (1 << 31) - 1, MASK32])
def test_centred_with_a_shared_high_word_is_bit_identical_to_the_python_spec(key, high):
    rng = random.Random(high)
    lows = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0x80000001, MASK32 - 1, MASK32, 0xFFFF, 0x10000]
    lows += [rng.randrange(1 << 32) for _ in range(300)]
    got = centred(key, _low_word_int32(lows), high)
    assert got.dtype == torch.int32
    assert torch.equal(got, _spec(key, [(high << 32) + lo for lo in lows]))


def test_centred_default_high_word_is_zero():
    key = tensor_key(3, "w")
    lows = list(range(50)) + [MASK32 - d for d in range(50)]
    assert torch.equal(centred(key, _low_word_int32(lows)), _spec(key, lows))


def test_centred_at_keeps_the_shape_and_matches_the_spec_in_2d_across_words():
    key = tensor_key(7, "w")
    counter = torch.arange(3 * 5, dtype=torch.int64).reshape(3, 5) + (1 << 32) - 7  # spans two words
    got = centred_at(key, counter)
    assert got.shape == (3, 5)
    assert torch.equal(got, _spec(key, counter.flatten().tolist()).reshape(3, 5))


def test_centred_at_on_many_high_words_in_one_tensor():
    key = tensor_key(8, "w")
    rng = random.Random(8)
    counters = [(rng.randrange(40) << 32) + rng.randrange(1 << 32) for _ in range(500)]
    assert torch.equal(centred_at(key, torch.tensor(counters)), _spec(key, counters))


def test_centred_at_of_no_counters_is_empty():
    got = centred_at(5, torch.empty(0, dtype=torch.int64))
    assert got.numel() == 0 and got.dtype == torch.int32


def test_hash32_tensor_equals_hash32_int_on_random_words():
    rng = random.Random(99)
    words = [0, 1, MASK32, MASK32 - 1, 0x80000000, 0x7FFFFFFF, 0xFFFF, 0x10000]
    words += [rng.randrange(0, 1 << 32) for _ in range(5000)]
    # the tensor version works on int32 holding the 32 bits in two's complement
    got = hash32(_low_word_int32(words)).to(torch.int64) & MASK32
    expected = torch.tensor([hash32_int(w) for w in words], dtype=torch.int64)
    assert torch.equal(got, expected)


def test_hash32_int_only_reads_the_low_32_bits():
    for w in [0, 5, 0xDEADBEEF]:
        assert hash32_int(w) == hash32_int(w + (1 << 32)) == hash32_int(w + (7 << 40))


def _lowbias32_independent(x: int) -> int:
    """lowbias32 written out again (C semantics of uint32 arithmetic)."""
    x = x % 2**32
    x = (x ^ (x >> 16)) % 2**32
    x = (x * 0x7FEB352D) % 2**32
    x = (x ^ (x >> 15)) % 2**32
    x = (x * 0x846CA68B) % 2**32
    return (x ^ (x >> 16)) % 2**32


def test_hash32_int_is_lowbias32_and_centred_int_is_the_documented_transform():
    assert hash32_int(0) == 0  # lowbias32 fixes 0
    words = [1, 2, 0xDEADBEEF, MASK32] + [random.Random(5).randrange(1 << 32) for _ in range(200)]
    assert [hash32_int(w) for w in words] == [_lowbias32_independent(w) for w in words]
    for seed, name in [(0, "w"), (2**64 - 1, "lm_head.weight"), ((7 << 32) + 3, "x.bias")]:
        # key = hash32(hash32(hash32(seed_lo) ^ seed_hi) ^ crc32(name))
        h = _lowbias32_independent
        key = h(h(h(seed % 2**32) ^ (seed >> 32)) ^ zlib.crc32(name.encode()))
        assert tensor_key(seed, name) == key
        for counter in (0, 1, MASK32, 1 << 32, (1 << 40) + 7, (1 << 63) - 1):
            # u = hash32(hash32(key ^ counter_hi) ^ counter_lo); c = (u & 0xFFFF) + (u >> 16) - 65535
            u = h(h(key ^ (counter >> 32)) ^ (counter % 2**32))
            assert centred_int(key, counter) == (u % 65536) + (u // 65536) - 65535


def test_centred_int_is_an_integer_in_range():
    key = tensor_key(3, "x")
    values = [centred_int(key, n) for n in _awkward_counters()]
    assert all(isinstance(v, int) and -C_MAX <= v <= C_MAX for v in values)
    assert CENTRED_OFFSET == C_MAX


def test_spec_golden_values_are_pinned():
    # Pinned from lemon/noise.py as written. Every other executor (Triton, C++, CUDA) must
    # reproduce these exact bits, and saved expansions depend on them: a change here is a
    # change of the noise definition, never a refactoring.
    assert [hash32_int(w) for w in (1, 2, 0xDEADBEEF, MASK32)] == [
        0x688990C0, 0xD1132181, 0xE628C683, 0x6768824A]
    assert tensor_key(0, "w") == 0xEE500C24
    assert tensor_key(2**64 - 1, "lm_head.weight") == 0x651C23D0
    key = tensor_key(0, "w")
    assert [centred_int(key, n) for n in (0, 1, MASK32, 1 << 32, (1 << 40) + 7, (1 << 63) - 1)] == [
        -54452, 23400, 35134, -3978, 29749, 16560]
    assert CENTRED_SCALE.hex() == "0x1.3988e1412ed76p-15"
    free, replica = scales(0.02)
    assert (free.hex(), replica.hex()) == ("0x1.91530bd88de08p-21", "0x1.1bc779ef9b324p-21")
    # and what an fp32 executor multiplies by: each rounded once from fp64
    assert float(np.float32(free)) == float.fromhex("0x1.91530cp-21")
    assert float(np.float32(replica)) == float.fromhex("0x1.1bc77ap-21")


# ---------------------------------------------------------------- scales

def test_centred_scale_is_one_over_the_exact_standard_deviation():
    # c = a + b - 65535 with a, b independent uniforms on {0..65535}: var = 2 (65536^2 - 1) / 12
    var = 2 * (65536**2 - 1) / 12
    assert CENTRED_SCALE == 1.0 / math.sqrt(var)


@pytest.mark.parametrize("std", [0.02, 1.0, 0.5, 1e-4, 3.0])
def test_scales_give_free_and_replica_multipliers(std):
    free, replica = scales(std)
    assert free == std * CENTRED_SCALE
    assert replica == pytest.approx(free / math.sqrt(2.0), rel=1e-15)
    assert isinstance(free, float) and isinstance(replica, float)


def test_scales_of_zero_std_are_zero():
    assert scales(0.0) == (0.0, 0.0)


def test_an_integer_difference_is_exact_in_fp32():
    # |c_a - c_b| <= 2 * 65535 < 2^24: an executor's int-to-float conversion loses nothing
    d = torch.tensor([2 * C_MAX, -2 * C_MAX, 2 * C_MAX - 1, 1, -1], dtype=torch.int32)
    assert torch.equal(d.float().to(torch.int32), d)


# ---------------------------------------------------------------- streams

def test_tensor_key_is_a_32_bit_function_of_seed_and_name():
    k = tensor_key(5, "a.weight")
    assert 0 <= k <= MASK32
    assert k == tensor_key(5, "a.weight")
    assert k != tensor_key(5, "a.bias")
    assert k != tensor_key(6, "a.weight")
    assert tensor_key(5, "a.weight") != tensor_key(5 + (1 << 32), "a.weight")  # the seed's high word counts


def test_same_seed_and_name_give_identical_integers():
    counter = torch.arange(100_000, dtype=torch.int64)
    a = centred_at(tensor_key(42, "h.0.attn.c_proj.weight"), counter)
    b = centred_at(tensor_key(42, "h.0.attn.c_proj.weight"), counter.clone())
    assert torch.equal(a, b)


@pytest.mark.parametrize("other", [(43, "h.0.attn.c_proj.weight"), (42, "h.1.attn.c_proj.weight"),
                                   (42 + (1 << 32), "h.0.attn.c_proj.weight")])
def test_different_seed_or_tensor_name_gives_a_different_stream(other):
    counter = torch.arange(100_000, dtype=torch.int64)
    a = centred_at(tensor_key(42, "h.0.attn.c_proj.weight"), counter).double()
    b = centred_at(tensor_key(*other), counter).double()
    assert (a == b).double().mean().item() < 0.01
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 0.02  # 100k draws: standard error ~3e-3


@pytest.mark.parametrize("start,stop", [(0, 1), (123, 4567), (9_999, 10_000), (5000, 5000)])
def test_a_block_of_counters_gets_the_values_of_the_whole_range(start, stop):
    key = tensor_key(11, "layer.weight")
    whole = centred_at(key, torch.arange(10_000, dtype=torch.int64))
    block = centred_at(key, torch.arange(start, stop, dtype=torch.int64))
    assert torch.equal(block, whole[start:stop])


def test_a_block_across_the_32_bit_boundary_gets_the_values_of_the_whole_range():
    key = tensor_key(11, "big.weight")
    base = (1 << 32) - 3000
    whole = centred_at(key, base + torch.arange(6000, dtype=torch.int64))
    block = centred_at(key, base + torch.arange(2990, 3020, dtype=torch.int64))
    assert torch.equal(block, whole[2990:3020])
    # and per word with centred(), as a tiled executor computes it
    below = centred(key, (base + torch.arange(3000, dtype=torch.int64)).to(torch.int32), 0)
    above = centred(key, torch.arange(3000, dtype=torch.int32), 1)
    assert torch.equal(torch.cat([below, above]), whole)


# ---------------------------------------------------------------- statistics

@pytest.fixture(scope="module")
def integers() -> torch.Tensor:
    return centred_at(tensor_key(0, "stats"), torch.arange(N_STATS, dtype=torch.int64))


def _fp32_weights(c: torch.Tensor, multiplier: float) -> torch.Tensor:
    """What an fp32 executor makes: the integer (exact) times the multiplier rounded once."""
    return (c.float() * torch.tensor(multiplier, dtype=torch.float32)).double()


@pytest.fixture(scope="module")
def free_draws(integers) -> torch.Tensor:
    return _fp32_weights(integers, scales(STD)[0])


@pytest.fixture(scope="module")
def replica_draws(integers) -> torch.Tensor:
    return _fp32_weights(integers[0::2] - integers[1::2], scales(STD)[1])  # independent pairs


def test_free_weights_have_zero_mean_and_variance_std2(free_draws):
    assert abs(free_draws.mean().item()) < 5e-3 * STD  # standard error 1e-3 std
    assert abs(free_draws.var(unbiased=False).item() / STD**2 - 1.0) < 0.01  # s.e. ~1.2e-3


def test_replica_weights_have_zero_mean_and_variance_std2(replica_draws):
    assert abs(replica_draws.mean().item()) < 7e-3 * STD  # standard error 1.4e-3 std
    assert abs(replica_draws.var(unbiased=False).item() / STD**2 - 1.0) < 0.01  # s.e. ~1.6e-3


def test_free_weights_are_triangular_and_bounded_by_sqrt6_std(free_draws):
    z = free_draws / STD
    assert z.abs().max().item() <= math.sqrt(6.0)
    assert z.abs().max().item() > 2.0
    # the triangular law: P(|z| > 2) = (1 - 2/sqrt 6)^2; E z^4 = 2.4 (excess kurtosis -0.6)
    assert abs((z.abs() > 2.0).double().mean().item() - (1 - 2 / math.sqrt(6)) ** 2) < 2e-3
    assert abs((z**4).mean().item() - 2.4) < 0.03


def test_replica_weights_are_bounded_by_2_sqrt3_std(replica_draws):
    z = replica_draws / STD
    assert z.abs().max().item() <= 2.0 * math.sqrt(3.0)
    assert z.abs().max().item() > 2.5  # the tails are reached
    # a sum of four uniforms: E z^4 = 3 - 1.2 / 4 = 2.7
    assert abs((z**4).mean().item() - 2.7) < 0.04


def test_the_extreme_integers_stay_inside_the_bounds_after_fp32_rounding():
    free, replica = (float(np.float32(m)) for m in scales(STD))
    assert float(np.float32(C_MAX * free)) <= math.sqrt(6.0) * STD
    assert float(np.float32(2 * C_MAX * replica)) <= 2.0 * math.sqrt(3.0) * STD


def test_centred_integers_are_symmetric(integers):
    c = integers.double()
    assert c.min().item() >= -C_MAX and c.max().item() <= C_MAX
    third = ((c * CENTRED_SCALE) ** 3).mean().item()
    assert abs(third) < 1e-2  # skewness; standard error ~2e-3
    positive = (c > 0).double().mean().item()
    negative = (c < 0).double().mean().item()
    assert abs(positive - negative) < 5e-3
    tail = 1.5 / CENTRED_SCALE
    assert abs((c > tail).double().mean().item() - (c < -tail).double().mean().item()) < 3e-3


def test_consecutive_counters_are_uncorrelated(integers):
    c = integers.double()
    lag1 = torch.corrcoef(torch.stack([c[:-1], c[1:]]))[0, 1].item()
    assert abs(lag1) < 5e-3  # standard error ~1e-3
    stride = torch.corrcoef(torch.stack([c[:-4096], c[4096:]]))[0, 1].item()
    assert abs(stride) < 5e-3  # a class stride of a 4096-long noise axis


def test_streams_of_two_keys_are_uncorrelated(integers):
    other = centred_at(tensor_key(0, "stats2"), torch.arange(N_STATS, dtype=torch.int64)).double()
    corr = torch.corrcoef(torch.stack([integers.double(), other]))[0, 1].item()
    assert abs(corr) < 5e-3


@pytest.mark.parametrize("start", [1 << 32, (1 << 32) - (1 << 17), 1 << 40, (1 << 48) + 5, (1 << 62) + 3])
def test_counters_above_2_pow_32_have_the_same_statistics(start):
    key = tensor_key(1, "big")
    c = centred_at(key, start + torch.arange(1 << 18, dtype=torch.int64))
    z = c.double() * CENTRED_SCALE
    assert abs(z.mean().item()) < 1e-2  # standard error 2e-3
    assert abs(z.var(unbiased=False).item() - 1.0) < 0.02
    low = centred_at(key, torch.arange(1 << 18, dtype=torch.int64))
    assert (low == c).double().mean().item() < 0.01  # the high word changes the stream
