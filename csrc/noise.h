// The noise generator and the number formats, once, for every C++ and CUDA source of lemon.
//
// Bit for bit the definition in lemon/noise.py (see its docstring for why these choices):
//   u = hash32(hash32(key ^ counter_hi) ^ counter_lo),  c = (u & 0xFFFF) + (u >> 16) - 65535
// and the conversions every executor must round identically: bf16 and fp16 are handled as
// their bits with integer round-to-nearest-even, so the CPU loops, the CUDA kernel and the
// CUDA kernel's CPU emulation (tests) share one definition and need no vendor headers.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LEMON_HD __host__ __device__ __forceinline__
#else
#define LEMON_HD inline
#endif

namespace lemon {

// lowbias32: two multiplies and three xor-shifts (all modulo 2^32)
LEMON_HD uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// The centred integer of the low counter word, given hash32(key ^ counter_hi).
LEMON_HD int32_t centred_low(uint32_t high_hash, uint32_t counter_lo) {
  const uint32_t u = hash32(counter_lo ^ high_hash);
  return static_cast<int32_t>((u & 0xFFFFu) + (u >> 16)) - 65535;
}

// The centred integer of a full 64-bit counter (the high word's hash per call).
LEMON_HD int32_t centred(uint32_t key, uint64_t counter) {
  return centred_low(hash32(key ^ static_cast<uint32_t>(counter >> 32)), static_cast<uint32_t>(counter));
}

// ---------------------------------------------------------------- number formats

struct bf16 { uint16_t bits; };  // layout of torch.bfloat16
struct f16 { uint16_t bits; };   // layout of torch.float16

LEMON_HD uint32_t float_bits(float x) { uint32_t b; memcpy(&b, &x, 4); return b; }
LEMON_HD float bits_float(uint32_t b) { float x; memcpy(&x, &b, 4); return x; }

// fp32 -> bf16, nearest even; a NaN stays a (quiet) NaN with its sign and top payload bits
LEMON_HD uint16_t bf16_bits(float x) {
  const uint32_t b = float_bits(x);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((b >> 16) | 0x40u);
  return static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

// condition ? a : b as masks: compilers keep a chain of these branch-free (vectorizable)
LEMON_HD uint32_t pick(bool condition, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(condition);
  return (a & mask) | (b & ~mask);
}

// fp32 -> fp16, nearest even, overflow to infinity, gradual underflow; NaN -> the quiet NaN.
// Every case is computed and one selected (no branches), so loops of it vectorize.
LEMON_HD uint16_t f16_bits(float x) {
  const uint32_t b = float_bits(x);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const uint32_t mag = b & 0x7FFFFFFFu;
  // a normal fp16: rebias the exponent, round off 13 mantissa bits (a carry may reach infinity)
  const uint32_t t = mag - 0x38000000u;
  const uint32_t normal = (t + 0xFFFu + ((t >> 13) & 1u)) >> 13;
  // a subnormal fp16 (units of 2^-24): the 24-bit significand shifted right by 14..24, nearest
  // even (a carry may make it the smallest normal, whose encoding follows on)
  uint32_t shift = 126u - (mag >> 23);
  shift = shift < 14u ? 14u : (shift > 24u ? 24u : shift);
  const uint32_t significand = (mag & 0x7FFFFFu) | 0x800000u;
  const uint32_t kept = significand >> shift;
  const uint32_t rest = significand & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  // round up iff rest > half, or rest == half and kept is odd: iff rest + (kept & 1) > half,
  // whose sign bit of half - (rest + odd) says so (all below 2^25)
  const uint32_t subnormal = kept + ((half - (rest + (kept & 1u))) >> 31);
  uint32_t magnitude = pick(mag >= 0x33000000u, subnormal, 0u);  // below: under half the smallest subnormal
  magnitude = pick(mag >= 0x38800000u, normal, magnitude);
  magnitude = pick(mag >= 0x477FF000u, 0x7C00u, magnitude);  // >= 65520 rounds past 65504
  magnitude = pick(mag > 0x7F800000u, 0x7E00u, magnitude);   // NaN
  return static_cast<uint16_t>(sign | magnitude);
}

// fp16 -> fp32, exact (a subnormal is its integer mantissa times 2^-24, exact in fp32)
LEMON_HD float f16_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  const uint32_t special = 0x7F800000u | (mantissa << 13);
  const uint32_t normal = ((exponent + 112u) << 23) | (mantissa << 13);
  const uint32_t subnormal = float_bits(static_cast<float>(mantissa) * 5.9604644775390625e-8f);  // 2^-24
  return bits_float(sign | pick(exponent == 0x1Fu, special, pick(exponent != 0, normal, subnormal)));
}

// Per storage type: the compute type (fp32, fp64 for fp64) and the two conversions.
template <typename T> struct Format;
template <> struct Format<float> {
  using acc = float;
  LEMON_HD static float load(float x) { return x; }
  LEMON_HD static float store(float x) { return x; }
};
template <> struct Format<double> {
  using acc = double;
  LEMON_HD static double load(double x) { return x; }
  LEMON_HD static double store(double x) { return x; }
};
template <> struct Format<bf16> {
  using acc = float;
  LEMON_HD static float load(bf16 x) { return bits_float(static_cast<uint32_t>(x.bits) << 16); }
  LEMON_HD static bf16 store(float x) { return bf16{bf16_bits(x)}; }
};
template <> struct Format<f16> {
  using acc = float;
  LEMON_HD static float load(f16 x) { return f16_float(x.bits); }
  LEMON_HD static f16 store(float x) { return f16{f16_bits(x)}; }
};

}  // namespace lemon
