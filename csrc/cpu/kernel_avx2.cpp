// The CPU block function compiled for AVX2 (chosen at run time when the CPU has it). No
// "fma" in the target: with -ffp-contract=off nothing would fuse anyway; it stays out to be sure.
#include <algorithm>
#include <vector>

#include "kernel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,f16c,bmi2")
#define LEMON_ISA avx2
#define LEMON_BLOCK_FN expand_block_avx2
#include "kernel.inc"
#endif
