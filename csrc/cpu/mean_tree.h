// lemon.plan.mean_along's fixed pairwise tree (see mean.cpp for the order), shared by
// torch.ops.lemon.mean_along and the CPU executor, which takes a source row's mean in its own
// pass over the row (MEAN columns) instead of reading the source twice. Internal linkage on
// purpose: each kernel_<isa>.cpp compiles it for its own instruction set, and one TU's AVX-512
// copy must never be linked in for another's.
#pragma once

#include <algorithm>
#include <cstdint>

namespace lemon {
namespace cpu {
namespace {

// The tree over `n` lines of `width` fp64 values each, stored line after line in buf; the
// result is left in the first line.
inline void pairwise_tree(double* buf, int64_t n, int64_t width) {
  while (n > 1) {
    const int64_t half = n / 2;
    double* __restrict low = buf;
    const double* __restrict high = buf + half * width;
    for (int64_t k = 0; k < half * width; ++k) low[k] += high[k];  // lemon: vectorized (pairwise_tree)
    if (n % 2) std::copy(buf + 2 * half * width, buf + (2 * half + 1) * width, buf + half * width);
    n = half + n % 2;
  }
}

}  // namespace
}  // namespace cpu
}  // namespace lemon
