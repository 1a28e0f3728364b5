"""The counter-based noise generator: the one definition every executor reproduces bit for bit.

LEMON breaks the symmetry between copied units with random numbers at the target model's
init scale. To let any executor (the PyTorch reference, a Triton kernel, a C++ loop, a
CUDA kernel) produce *the same* numbers with no state, no extra memory and in any order,
a number is a pure function of ``(seed, tensor name, counter)``::

    key      = hash32(hash32(hash32(seed_lo) ^ seed_hi) ^ crc32(tensor name))
    u        = hash32(hash32(key ^ counter_hi) ^ counter_lo)      # 32 random bits
    c        = (u & 0xFFFF) + (u >> 16) - 65535                    # an integer in [-65535, 65535]

``hash32`` is the "lowbias32" integer mixer (two multiplies, three xor-shifts). ``c`` is the
sum of two independent 16-bit uniforms, centred: a symmetric triangular integer of variance
(65536^2 - 1) / 6. Which counter an output element uses, and how its integers become a
weight, is the plan's business (:mod:`lemon.plan`): the counter is keyed by the element's
*replica class* on the axis that is not summed, so replicas get identical rows, and a
replica of a split weight gets the *difference* of two neighbours' integers, so the
replicas' noise sums to exactly zero. That difference is still an integer (|d| < 2^18),
exact in fp32, and turns into a weight with one multiplication by a per-tensor constant
(:func:`scales`): one rounding, the same on every IEEE executor.

Why it is cheap, counted in 32-bit integer operations per output element on a GPU (where
``& 0xFFFFFFFF`` is free): the counter (1 multiply-add), the key xor (1), hash32
(3 xor-shifts = 6, 2 multiplies), the transform (and, shift, add, subtract = 4): about 14
per integer, two integers for a replica (28), then a subtraction, an int-to-float and a
multiply. The inner hash of ``counter_hi`` is constant over each 2^32-counter stretch, so
an executor computes it once per tile. That is independent of the replica group's size.
Triton's ``tl.randn`` spends a Philox4x32-10 call (10 rounds of 32x32->64 multiplies) plus
Box-Muller (log, sqrt, cos) per normal: an order of magnitude more, enough to make a
bandwidth-bound kernel compute-bound on an H100 (~1.5 G elements/ms leaves a few dozen
integer operations per element).

Why it is a sound init: a free weight gets ``c`` (triangular, bounded at +-sqrt(6) sigma);
a replica gets ``c_a - c_b`` (a sum of four uniforms: close to Gaussian, bounded at
+-2 sqrt(3) sigma); both are scaled to the requested standard deviation. What symmetry
breaking needs is independent perturbations of the target's init variance; the exact bell
shape does not matter (PyTorch's own default Linear init is uniform).
"""
from __future__ import annotations

import math
import zlib

MASK32 = 0xFFFFFFFF
CENTRED_OFFSET = 65535  # the mean of (u & 0xFFFF) + (u >> 16)
# 1 / standard deviation of the centred integer c
CENTRED_SCALE = 1.0 / math.sqrt((65536.0**2 - 1.0) / 6.0)


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
    """The 32-bit key of one tensor's noise stream (``seed`` in [0, 2^64), checked by the caller)."""
    seed_word = hash32_int(hash32_int(seed & MASK32) ^ (seed >> 32))
    return hash32_int(seed_word ^ zlib.crc32(tensor_name.encode()))


def centred_int(key: int, counter: int) -> int:
    """The centred integer for one counter, in plain Python: the specification."""
    u = hash32_int(hash32_int((counter >> 32) ^ key) ^ (counter & MASK32))
    return (u & 0xFFFF) + (u >> 16) - CENTRED_OFFSET


def scales(std: float) -> tuple[float, float]:
    """(free, replica) multipliers turning centred integers into weights of standard deviation
    ``std``: a free weight is ``c * free``, a replica ``(c_a - c_b) * replica`` (the difference
    of two independent integers has twice the variance). Executors round each once to their
    compute dtype (fp32, or fp64 for fp64 models) before multiplying."""
    return std * CENTRED_SCALE, std * CENTRED_SCALE / math.sqrt(2.0)


def signed32(value: int) -> int:
    """A 32-bit word as the signed int32 holding the same bits (torch int32 tensors, Triton
    kernel arguments: a Python int >= 2^31 would widen them to 64 bits)."""
    return value - (1 << 32) if value >= 1 << 31 else value


def hash32(x):
    """lowbias32 on an int32 tensor (the 32 bits as two's complement), in place.

    int32 multiplication wraps modulo 2^32 as uint32 does; right shifts sign-extend, so each
    one is masked back to a logical shift. Half the bytes of int64 arithmetic: ~2x faster.
    """
    x ^= (x >> 16) & 0xFFFF
    x.mul_(signed32(0x7FEB352D))
    x ^= (x >> 15) & 0x1FFFF
    x.mul_(signed32(0x846CA68B))
    x ^= (x >> 16) & 0xFFFF
    return x


def centred(key: int, counter_lo, counter_hi: int = 0):
    """The centred integers (int32 tensor) for counters ``counter_hi * 2^32 + counter_lo``:
    ``counter_lo`` is an int32 tensor holding the low 32 bits (consumed in place),
    ``counter_hi`` the high word, shared by the whole tensor (one hash for all of it)."""
    u = hash32(counter_lo.bitwise_xor_(signed32(hash32_int(key ^ counter_hi))))
    high = (u >> 16) & 0xFFFF
    return u.bitwise_and_(0xFFFF).add_(high).sub_(CENTRED_OFFSET)


def centred_at(key: int, counter):
    """:func:`centred` for an int64 tensor of counters (any values in [0, 2^63))."""
    import torch

    low = counter.to(torch.int32)  # int64 -> int32 keeps the low 32 bits
    high = counter >> 32
    if counter.numel() == 0 or int(high.min()) == int(high.max()):
        return centred(key, low, int(high.max()) if counter.numel() else 0)
    out = torch.empty_like(low)  # rare: the counters span several 2^32 words
    for word in high.unique().tolist():
        at = high == word
        out[at] = centred(key, low[at], word)
    return out
