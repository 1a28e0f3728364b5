"""The counter-based noise generator: the one definition every executor reproduces.

LEMON breaks the symmetry between copied units with random numbers drawn at the
target model's init scale. To let any executor (the PyTorch reference, a Triton
kernel, a C++ loop, a CUDA kernel) produce *the same* numbers with no state, no
extra memory and in any order, a number is a pure function of
``(seed, tensor name, global element index)``:

    key      = hash32(hash32(hash32(seed_lo) ^ seed_hi) ^ crc32(tensor name))
    u        = hash32(hash32(key ^ index_hi) ^ index_lo)          # 32 random bits
    z        = ((u & 0xFFFF) + (u >> 16) - 65535) * NORMAL_SCALE  # fp32, mean 0, variance 1
    noise    = std * z                                            # fp32

``hash32`` is the "lowbias32" integer mixer (two multiplies, three xor-shifts).
``index`` is the row-major element index in the *whole* output tensor (after the
plan's 2-D view), so any block of a tensor gets exactly the noise the whole
tensor would: tiles of a kernel, slices while streaming, shards of a rank.

Why it is cheap, counted in 32-bit integer operations per output element on a GPU
(where ``& 0xFFFFFFFF`` is free): the element index (1 multiply-add), the key xor (1),
hash32 (3 xor-shifts = 6, 2 multiplies), the transform (and, shift, add, subtract,
int-to-float, multiply = 6), times std (1): about 17. The inner hash of ``index_hi`` is
constant over each 2^32-element stretch, so an executor computes it once per tile. The
zero-sum rule needs every replica's R: a kernel that makes the n replicas of one source
element together spends n hashes on n outputs, plus ~2 adds and a multiply per element.
Triton's ``tl.randn`` spends a Philox4x32-10 call (10 rounds of 32x32->64 multiplies) plus
Box-Muller (log, sqrt, cos) per normal: an order of magnitude more, enough to make a
bandwidth-bound kernel compute-bound on an H100 (~1.5 G elements/ms leaves a few dozen
integer operations per element).

Why it is a sound init: the sum of two independent 16-bit uniforms is the
triangular distribution, symmetric, zero-mean, scaled here to unit variance,
bounded at +-sqrt(6) sigma. What symmetry breaking needs is independent
perturbations of the target's init variance; the exact bell shape does not
matter (PyTorch's own default Linear init is uniform). Every operation is
integer or a single fp32 rounding, so every IEEE executor gets the same bits.
"""
from __future__ import annotations

import math
import zlib

MASK32 = 0xFFFFFFFF
# 1 / standard deviation of (a + b) for a, b uniform on {0, ..., 65535}.
NORMAL_SCALE = 1.0 / math.sqrt((65536.0**2 - 1.0) / 6.0)
NORMAL_OFFSET = 65535  # the mean of a + b


def hash32_int(x: int) -> int:
    """lowbias32 on a Python int (the specification; executors vectorize it)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    x ^= x >> 16
    return x


def tensor_key(seed: int, tensor_name: str) -> int:
    """The 32-bit key of one tensor's noise stream."""
    seed &= (1 << 64) - 1
    seed_word = hash32_int(hash32_int(seed & MASK32) ^ (seed >> 32))
    return hash32_int(seed_word ^ zlib.crc32(tensor_name.encode()))


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def hash32(x):
    """lowbias32 on an int32 tensor (the 32 bits as two's complement), in place.

    int32 multiplication wraps modulo 2^32 as uint32 does; right shifts sign-extend, so each
    one is masked back to a logical shift. Half the bytes of int64 arithmetic: ~2x faster.
    """
    x ^= (x >> 16) & 0xFFFF
    x.mul_(_signed32(0x7FEB352D))
    x ^= (x >> 15) & 0x1FFFF
    x.mul_(_signed32(0x846CA68B))
    x ^= (x >> 16) & 0xFFFF
    return x


def standard_noise(key: int, index):
    """Unit-variance noise (fp32) for the int64 element indices ``index`` of one tensor."""
    import torch

    low = index.to(torch.int32)  # int64 -> int32 keeps the low 32 bits
    if index.numel() == 0 or int(index.max()) <= MASK32:
        u = hash32(low ^ _signed32(hash32_int(key)))  # the high word is 0: its hash is one constant
    else:
        u = hash32(hash32((index >> 32).to(torch.int32) ^ _signed32(key)) ^ low)
    centred = (u & 0xFFFF).add_((u >> 16) & 0xFFFF).sub_(NORMAL_OFFSET)  # an exact integer in fp32
    return centred.to(torch.float32).mul_(torch.tensor(NORMAL_SCALE, dtype=torch.float32))


def standard_noise_int(key: int, index: int) -> float:
    """One value of :func:`standard_noise`, in plain Python (for tests and other executors)."""
    import struct

    u = hash32_int(hash32_int((index >> 32) ^ key) ^ (index & MASK32))
    scale = struct.unpack("f", struct.pack("f", NORMAL_SCALE))[0]
    value = float((u & 0xFFFF) + (u >> 16) - NORMAL_OFFSET) * scale
    return struct.unpack("f", struct.pack("f", value))[0]
