"""The Triton kernel that carries out a plan segment: replicas together, noise in registers.

A plan (:mod:`lemon.plan`) gives every output index of an axis an extended source index. The
executor (:mod:`lemon_kernels.executor`) cuts each axis of a plan's window into *segments*
that repeat a base pattern with a period P (a circular map: base 0..D_S-1, repeated k times
and a partial period; a head map; a whole axis with no repetition is one period). A program
of this kernel owns a tile of *base* positions on both axes and writes every replica of it:

* it reads each source element of its tile once (through the base indices: MEAN, ONE and
  ZERO resolved against the precomputed means) and keeps it in registers;
* it walks the replicas along the noise axis in order, carrying the centred integer of the
  current replica, so each integer is hashed once and a replica's noise is
  ``c(current) - c(next)`` (the next replica's, or the first's for the last one);
* the noise depends on the other axis only through its class (its extended index), which all
  of that axis's replicas share, so it is computed once and written to all of them.

Integer operations per output element, counted as :mod:`lemon.noise` counts them (32-bit ops;
masks are free on a GPU): the counter (a multiply-add), the low word's xor with the key's hash
(1), lowbias32 (3 xor-shifts = 6, 2 multiplies), the centred transform (and, shift, add,
subtract = 4): ~14 per centred integer, one integer per noise-axis replica and other-axis
class, so ~14 / k_other per output element, plus the subtraction, an int-to-float, a multiply
and an add for the noise, and two multiplies for the scales. A segment whose replica groups
are not closed under its period (a rearranged GQA head map, a window that cuts groups) reads
the next replica's index from a table and hashes it too: ~28 / k_other. bf16 output adds ~4
integer operations for round-to-nearest-even on the bits (the interpreter's float-to-bf16 cast
truncates; integer rounding agrees with torch everywhere).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _lowbias32(x):
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    return x


@triton.jit
def _centred(counter, key_hash, key, WIDE_COUNTERS: tl.constexpr):
    """The centred integer (int32) of int64 counters, as lemon.noise.centred_int defines it."""
    low = (counter & 0xFFFFFFFF).to(tl.uint32)
    if WIDE_COUNTERS:  # counters above 2^32: the high word's hash per element
        high_hash = _lowbias32((counter >> 32).to(tl.uint32) ^ key)
    else:
        high_hash = key_hash
    u = _lowbias32(low ^ high_hash)
    return ((u & 0xFFFF) + (u >> 16)).to(tl.int32) - 65535


@triton.jit
def _round_to_bf16_bits(x):
    """fp32 -> bf16 bits, rounded to nearest even by integer arithmetic."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return tl.where(is_nan, (bits >> 16) | 0x40, rounded).to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit(do_not_specialize=["key"])  # a key of 1 must stay a value, not a constant
def expand_segment(
    out_ptr, src_ptr,
    row_ext_ptr, col_ext_ptr,  # base extended indices (int64), unless affine
    row_scale_ptr, col_scale_ptr,  # per window position, compute dtype
    row_mean_ptr, col_mean_ptr, total_mean_ptr,  # MEAN side inputs, compute dtype
    noise_scale_ptr,  # [free, replica], compute dtype
    next_ptr,  # per noise-axis window position: the global index of its next replica (table mode)
    n_src_rows, n_src_cols, src_stride, out_stride,
    row_start, row_len, row_period, row_reps, row_first, row_global,  # segment: window start, length,
    col_start, col_len, col_period, col_reps, col_first, col_global,  # period, replicas (periods, the last
    # maybe partial), first base index if affine, window origin
    key, n_noise,
    COMPUTE: tl.constexpr, OUT_KIND: tl.constexpr,  # OUT_KIND: 0 same as COMPUTE, 1 bf16 bits, 2 fp16
    NOISE_AXIS: tl.constexpr, NEXT_TABLE: tl.constexpr, WIDE_COUNTERS: tl.constexpr,
    ROW_AFFINE: tl.constexpr, COL_AFFINE: tl.constexpr, SPECIALS: tl.constexpr,
    HAS_ROW_SCALE: tl.constexpr, HAS_COL_SCALE: tl.constexpr,
    HAS_ROW_MEANS: tl.constexpr, HAS_COL_MEANS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    base_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    base_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_r = (base_r < row_period) & (base_r < row_len)
    in_c = (base_c < col_period) & (base_c < col_len)
    if ROW_AFFINE:
        ext_r = row_first + base_r.to(tl.int64)
    else:
        ext_r = tl.load(row_ext_ptr + base_r, mask=in_r, other=0)
    if COL_AFFINE:
        ext_c = col_first + base_c.to(tl.int64)
    else:
        ext_c = tl.load(col_ext_ptr + base_c, mask=in_c, other=0)

    # the base tile of S~, read once: a source element, a mean, 1 or 0
    real_r = ext_r < n_src_rows
    real_c = ext_c < n_src_cols
    inside = in_r[:, None] & in_c[None, :]
    value = tl.load(src_ptr + ext_r[:, None] * src_stride + ext_c[None, :],
                    mask=inside & real_r[:, None] & real_c[None, :], other=0).to(COMPUTE)
    if SPECIALS:
        mean_r = ext_r == n_src_rows
        mean_c = ext_c == n_src_cols
        # a side input the plan does not use is a 1-element placeholder: never index it
        if HAS_COL_MEANS:  # the plan has MEAN rows
            col_mean = tl.load(col_mean_ptr + ext_c, mask=in_c & real_c, other=0)
            value = tl.where(mean_r[:, None] & real_c[None, :], col_mean[None, :], value)
        if HAS_ROW_MEANS:  # the plan has MEAN columns
            row_mean = tl.load(row_mean_ptr + ext_r, mask=in_r & real_r, other=0)
            value = tl.where(real_r[:, None] & mean_c[None, :], row_mean[:, None], value)
        if HAS_COL_MEANS and HAS_ROW_MEANS:
            total = tl.load(total_mean_ptr)
            value = tl.where(mean_r[:, None] & mean_c[None, :], total, value)
        one = (ext_r == n_src_rows + 1)[:, None] | (ext_c == n_src_cols + 1)[None, :]
        value = tl.where(one, 1.0, value)
        zero = (ext_r == n_src_rows + 2)[:, None] | (ext_c == n_src_cols + 2)[None, :]
        value = tl.where(zero, 0.0, value)

    if NOISE_AXIS == 0:
        reps_outer, reps_inner = row_reps, col_reps
    else:
        reps_outer, reps_inner = col_reps, row_reps

    if NOISE_AXIS >= 0:
        key_hash = _lowbias32(key.to(tl.uint32))  # the high word is 0: one hash for the program
        free_scale = tl.load(noise_scale_ptr)
        replica_scale = tl.load(noise_scale_ptr + 1)
        # along the noise axis: base index s, its length and period; the class of the other axis
        if NOISE_AXIS == 0:
            base_a, len_a, period_a, start_a, global_a = base_r, row_len, row_period, row_start, row_global
            other_class, other_real_zero = ext_c[None, :], (ext_c == n_src_cols + 2)[None, :]
            free = (ext_r == n_src_rows + 2)[:, None]
            a_index = base_a[:, None]
        else:
            base_a, len_a, period_a, start_a, global_a = base_c, col_len, col_period, col_start, col_global
            other_class, other_real_zero = ext_r[:, None], (ext_r == n_src_rows + 2)[:, None]
            free = (ext_c == n_src_cols + 2)[None, :]
            a_index = base_a[None, :]
        class_offset = other_class * n_noise + global_a + start_a  # counter = this + replica position
        c_first = _centred(class_offset + a_index, key_hash, key, WIDE_COUNTERS)
        c_current = c_first

    for outer in range(0, reps_outer):
        if NOISE_AXIS >= 0:
            position_a = outer * period_a + a_index  # in the segment
            if NEXT_TABLE:
                nxt = tl.load(next_ptr + start_a + position_a, mask=position_a < len_a, other=0)
                c_next = _centred(other_class * n_noise + nxt, key_hash, key, WIDE_COUNTERS)
            elif (outer + 1) * period_a < len_a:  # some lane has a next replica in this segment
                has_next = position_a + period_a < len_a
                c_after = _centred(class_offset + position_a + period_a, key_hash, key, WIDE_COUNTERS)
                c_next = tl.where(has_next, c_after, c_first)
            else:
                c_next = c_first
            replica_noise = (c_current - c_next).to(COMPUTE) * replica_scale
            free_noise = c_current.to(COMPUTE) * free_scale
            noise = tl.where(free, free_noise, replica_noise)
            noise = tl.where(other_real_zero, 0.0, noise)
            if not NEXT_TABLE:
                c_current = c_next  # the next replica's integer is this replica's next time
        for inner in range(0, reps_inner):
            if NOISE_AXIS == 0:
                rep_r, rep_c = outer, inner
            else:
                rep_r, rep_c = inner, outer
            pos_r = rep_r * row_period + base_r  # in the segment
            pos_c = rep_c * col_period + base_c
            ok = (in_r & (pos_r < row_len))[:, None] & (in_c & (pos_c < col_len))[None, :]
            element = value
            if HAS_ROW_SCALE:
                element = element * tl.load(row_scale_ptr + row_start + pos_r, mask=pos_r < row_len, other=0)[:, None]
            if HAS_COL_SCALE:
                element = element * tl.load(col_scale_ptr + col_start + pos_c, mask=pos_c < col_len, other=0)[None, :]
            if NOISE_AXIS >= 0:
                element = element + noise
            offset = (row_start + pos_r).to(tl.int64)[:, None] * out_stride + (col_start + pos_c)[None, :]
            if OUT_KIND == 1:
                tl.store(out_ptr + offset, _round_to_bf16_bits(element), mask=ok)
            elif OUT_KIND == 2:
                tl.store(out_ptr + offset, element.to(tl.float16), mask=ok)
            else:
                tl.store(out_ptr + offset, element, mask=ok)
        if NOISE_AXIS >= 0:
            if NEXT_TABLE:  # the table's next replica may lie anywhere: hash the following one afresh
                c_current = _centred(class_offset + (outer + 1) * period_a + a_index, key_hash, key, WIDE_COUNTERS)
