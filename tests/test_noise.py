"""The counter-based noise generator (lemon.noise) is a specification.

Other executors (Triton, C++, CUDA) must reproduce it bit for bit, so the
vectorized torch path is pinned against the plain-Python definition, and its
statistics are checked against the bounds a sound init needs.
"""
from __future__ import annotations

import math
import random
import struct

import pytest
import torch

from lemon.noise import (
    MASK32,
    NORMAL_SCALE,
    hash32,
    hash32_int,
    standard_noise,
    standard_noise_int,
    tensor_key,
)

N_STATS = 1 << 20  # ~1e6 draws for the statistics


def _spec_noise(key: int, indices: list[int]) -> torch.Tensor:
    return torch.tensor([standard_noise_int(key, i) for i in indices], dtype=torch.float32)


def _awkward_indices() -> list[int]:
    rng = random.Random(1234)
    idx = list(range(0, 600))
    idx += [(1 << 32) + d for d in range(-300, 300)]  # across the low/high word boundary
    idx += [rng.randrange(0, 1 << 32) for _ in range(800)]
    idx += [rng.randrange(1 << 32, 1 << 48) for _ in range(800)]
    idx += [rng.randrange(1 << 48, (1 << 63) - 1) for _ in range(400)]
    idx += [(1 << 40) + 7, (1 << 40) - 1, 1 << 40, (1 << 62) + 12345, (1 << 63) - 1, (1 << 63) - 2]
    idx += [(1 << 63) - 1 - d for d in range(100)]
    return idx


KEYS = [0, 1, MASK32, 0x80000000, tensor_key(0, "model.layers.0.mlp.down_proj.weight"),
        tensor_key(2**64 - 1, "lm_head.weight")]


@pytest.mark.parametrize("key", KEYS)
def test_noise_is_bit_identical_to_the_python_spec(key):
    indices = _awkward_indices()
    assert len(indices) > 3000
    expected = _spec_noise(key, indices)
    got = standard_noise(key, torch.tensor(indices, dtype=torch.int64))
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_noise_keeps_the_index_shape_and_matches_the_spec_in_2d():
    key = tensor_key(7, "w")
    index = torch.arange(3 * 5, dtype=torch.int64).reshape(3, 5) + (1 << 40)
    got = standard_noise(key, index)
    assert got.shape == (3, 5)
    expected = _spec_noise(key, index.flatten().tolist()).reshape(3, 5)
    assert torch.equal(got, expected)


def test_python_spec_values_are_fp32_representable():
    key = tensor_key(3, "x")
    for i in [0, 1, 2**33 + 5, 2**40 + 7]:
        v = standard_noise_int(key, i)
        assert struct.unpack("f", struct.pack("f", v))[0] == v


def test_hash32_tensor_equals_hash32_int_on_random_words():
    rng = random.Random(99)
    words = [0, 1, MASK32, MASK32 - 1, 0x80000000, 0x7FFFFFFF, 0xFFFF, 0x10000]
    words += [rng.randrange(0, 1 << 32) for _ in range(5000)]
    # the tensor version works on int32 holding the 32 bits in two's complement
    got = hash32(torch.tensor(words, dtype=torch.int64).to(torch.int32)).to(torch.int64) & MASK32
    expected = torch.tensor([hash32_int(w) for w in words], dtype=torch.int64)
    assert torch.equal(got, expected)


def test_hash32_int_only_reads_the_low_32_bits():
    for w in [0, 5, 0xDEADBEEF]:
        assert hash32_int(w) == hash32_int(w + (1 << 32)) == hash32_int(w + (7 << 40))


def test_hash32_int_is_lowbias32_and_noise_is_the_documented_transform():
    assert hash32_int(0) == 0  # lowbias32 fixes 0
    words = [1, 2, 0xDEADBEEF, MASK32] + [random.Random(5).randrange(1 << 32) for _ in range(200)]
    assert [hash32_int(w) for w in words] == [_lowbias32_independent(w) for w in words]
    # z = (a + b - 65535) * NORMAL_SCALE in fp32, with a, b the two 16-bit halves of u
    key = tensor_key(0, "w")
    for index in (0, 1, (1 << 40) + 7):
        u = _lowbias32_independent(_lowbias32_independent((index >> 32) ^ key) ^ (index % 2**32))
        centred = (u & 0xFFFF) + (u >> 16) - 65535
        expected = torch.tensor(centred, dtype=torch.float32) * torch.tensor(NORMAL_SCALE, dtype=torch.float32)
        assert standard_noise_int(key, index) == expected.item()


def test_spec_golden_values_are_pinned():
    # Pinned from lemon/noise.py as written: a change here silently breaks every other
    # executor (Triton, C++, CUDA) that reproduces these bits, and every saved expansion.
    assert [hash32_int(w) for w in (1, 2, 0xDEADBEEF, MASK32)] == [
        0x688990C0, 0xD1132181, 0xE628C683, 0x6768824A]
    assert tensor_key(0, "w") == 0xEE500C24
    assert tensor_key(2**64 - 1, "lm_head.weight") == 0x651C23D0
    key = tensor_key(0, "w")
    assert [standard_noise_int(key, i) for i in (0, 1, (1 << 40) + 7)] == [
        float.fromhex("-0x1.0481d00000000p+1"), float.fromhex("0x1.bfcc200000000p-1"),
        float.fromhex("0x1.1ca5e00000000p+0")]


def _lowbias32_independent(x: int) -> int:
    """lowbias32 written out again (C semantics of uint32 arithmetic)."""
    x = x % 2**32
    x = (x ^ (x >> 16)) % 2**32
    x = (x * 0x7FEB352D) % 2**32
    x = (x ^ (x >> 15)) % 2**32
    x = (x * 0x846CA68B) % 2**32
    return (x ^ (x >> 16)) % 2**32


def test_tensor_key_is_a_32_bit_function_of_seed_and_name():
    k = tensor_key(5, "a.weight")
    assert 0 <= k <= MASK32
    assert k == tensor_key(5, "a.weight")
    assert k != tensor_key(5, "a.bias")
    assert k != tensor_key(6, "a.weight")
    assert tensor_key(5, "a.weight") != tensor_key(5 + (1 << 32), "a.weight")  # the seed's high word counts


def test_same_seed_and_name_give_identical_noise():
    index = torch.arange(100_000, dtype=torch.int64)
    a = standard_noise(tensor_key(42, "h.0.attn.c_proj.weight"), index)
    b = standard_noise(tensor_key(42, "h.0.attn.c_proj.weight"), index.clone())
    assert torch.equal(a, b)


@pytest.mark.parametrize("other", [(43, "h.0.attn.c_proj.weight"), (42, "h.1.attn.c_proj.weight"),
                                   (42 + (1 << 32), "h.0.attn.c_proj.weight")])
def test_different_seed_or_tensor_name_gives_a_different_stream(other):
    index = torch.arange(100_000, dtype=torch.int64)
    a = standard_noise(tensor_key(42, "h.0.attn.c_proj.weight"), index)
    b = standard_noise(tensor_key(*other), index)
    equal_fraction = (a == b).double().mean().item()
    assert equal_fraction < 0.01
    corr = torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1].item()
    assert abs(corr) < 0.02  # 100k draws: standard error ~3e-3


@pytest.fixture(scope="module")
def draws() -> torch.Tensor:
    return standard_noise(tensor_key(0, "stats"), torch.arange(N_STATS, dtype=torch.int64)).double()


def test_noise_has_zero_mean(draws):
    assert abs(draws.mean().item()) < 5e-3  # standard error 1e-3


def test_noise_has_unit_variance(draws):
    var = draws.var(unbiased=False).item()
    assert abs(var - 1.0) < 0.01  # standard error ~1.2e-3 (triangular kurtosis 2.4)


def test_noise_is_symmetric(draws):
    third = (draws**3).mean().item()
    assert abs(third) < 1e-2  # skewness; standard error ~2e-3
    positive = (draws > 0).double().mean().item()
    negative = (draws < 0).double().mean().item()
    assert abs(positive - negative) < 5e-3
    # tails balance too
    assert abs((draws > 1.5).double().mean().item() - (draws < -1.5).double().mean().item()) < 3e-3


def test_noise_is_bounded_by_sqrt6_and_reaches_the_tails(draws):
    bound = math.sqrt(6.0) + 1e-6
    assert draws.abs().max().item() <= bound
    assert draws.abs().max().item() > 2.0  # P(|z| > 2) ~ 3.4% for the triangular law
    # the triangular law: P(|z| > 2) = (1 - 2/sqrt 6)^2
    tail = (draws.abs() > 2.0).double().mean().item()
    assert abs(tail - (1 - 2 / math.sqrt(6)) ** 2) < 2e-3


def test_consecutive_indices_are_uncorrelated(draws):
    x, y = draws[:-1], draws[1:]
    lag1 = torch.corrcoef(torch.stack([x, y]))[0, 1].item()
    assert abs(lag1) < 5e-3  # standard error ~1e-3
    stride = torch.corrcoef(torch.stack([draws[:-4096], draws[4096:]]))[0, 1].item()
    assert abs(stride) < 5e-3  # a row stride of a 4096-wide tensor


def test_streams_of_two_keys_are_uncorrelated(draws):
    other = standard_noise(tensor_key(0, "stats2"), torch.arange(N_STATS, dtype=torch.int64)).double()
    corr = torch.corrcoef(torch.stack([draws, other]))[0, 1].item()
    assert abs(corr) < 5e-3


def test_noise_above_2_pow_32_has_the_same_statistics():
    z = standard_noise(tensor_key(1, "big"), (1 << 40) + torch.arange(1 << 18, dtype=torch.int64)).double()
    assert abs(z.mean().item()) < 1e-2  # standard error 2e-3
    assert abs(z.var(unbiased=False).item() - 1.0) < 0.02
    low = standard_noise(tensor_key(1, "big"), torch.arange(1 << 18, dtype=torch.int64))
    assert (low.double() == z).double().mean().item() < 0.01  # the high word changes the stream


@pytest.mark.parametrize("start,stop", [(0, 1), (123, 4567), (9_999, 10_000), (5000, 5000)])
def test_a_block_of_indices_gets_the_values_of_the_whole_range(start, stop):
    key = tensor_key(11, "layer.weight")
    whole = standard_noise(key, torch.arange(10_000, dtype=torch.int64))
    block = standard_noise(key, torch.arange(start, stop, dtype=torch.int64))
    assert torch.equal(block, whole[start:stop])


def test_a_2d_tile_gets_the_values_of_the_whole_tensor_across_the_32_bit_boundary():
    key = tensor_key(11, "big.weight")
    n_cols = 1 << 16
    base_row = (1 << 16) - 3  # rows straddle linear index 2**32
    rows = torch.arange(base_row, base_row + 6, dtype=torch.int64)
    cols = torch.arange(n_cols - 50, n_cols, dtype=torch.int64)
    whole_rows = standard_noise(key, rows[:, None] * n_cols + torch.arange(n_cols)[None, :])
    tile = standard_noise(key, rows[2:5, None] * n_cols + cols[None, 10:40])
    assert torch.equal(tile, whole_rows[2:5, n_cols - 40:n_cols - 10])
    assert int((rows[-1] * n_cols)) > (1 << 32)
