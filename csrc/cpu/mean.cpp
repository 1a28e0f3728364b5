// torch.ops.lemon.mean_along: lemon.plan.mean_along's fixed pairwise tree, bit for bit, on
// torch's threads. The MEAN side input of a plan reads every source element; in Python the tree
// is log2(n) passes of torch operations on one thread, a third of a small model's expansion.
//
// The tree over n lines (line i: element i along `dim`): while more than one line is left, line
// i becomes line i + line (i + half) for i < half, and an odd last line is carried up as line
// half. Each line is an fp64 value per position across the other axis; additions are IEEE
// fp64 in that fixed order (no FMA: -ffp-contract=off), so any block size or thread count gives
// the same bits. The sum is divided by n at the end.
#include <ATen/Dispatch.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "block_pool.h"
#include "mean_tree.h"

namespace lemon {
namespace {

// fp32, bf16 and fp16 values are exact as floats, hence as doubles
template <typename T>
inline double widen(T v) { return static_cast<double>(static_cast<float>(v)); }
inline double widen(double v) { return v; }

constexpr int64_t kLanes = 16;  // positions per block when the lines are rows (dim 0)

template <typename T>
void mean_rows_of(const at::Tensor& x, int64_t dim, double* out) {
  const int64_t rows = x.size(0), cols = x.size(1), row_stride = x.stride(0);
  const T* data = x.data_ptr<T>();
  if (dim == 1) {  // one tree per row, over its contiguous columns
    // (rows side by side, 4 or 16 to a line so the tree's loops run long, were 1.6-3x slower
    // on a 50k x 768 embedding: the transposing gather, and lines that no longer fit in L1)
    const int64_t per_block = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(cols, 1));
    cpu::run_blocks((rows + per_block - 1) / per_block, at::get_num_threads(), [&](int64_t b) {
      thread_local std::vector<double> buf;
      buf.resize(cols);
      for (int64_t r = b * per_block; r < std::min(rows, (b + 1) * per_block); ++r) {
        const T* row = data + r * row_stride;
        for (int64_t c = 0; c < cols; ++c) buf[c] = widen(row[c]);
        cpu::pairwise_tree(buf.data(), cols, 1);
        out[r] = buf[0] / static_cast<double>(cols);
      }
    });
  } else {  // the lines are rows: kLanes columns at a time, every row of them
    const int64_t blocks = (cols + kLanes - 1) / kLanes;
    cpu::run_blocks(blocks, at::get_num_threads(), [&](int64_t b) {
      thread_local std::vector<double> buf;
      const int64_t c0 = b * kLanes, width = std::min(kLanes, cols - c0);
      buf.resize(rows * width);
      for (int64_t r = 0; r < rows; ++r) {
        const T* row = data + r * row_stride + c0;
        for (int64_t c = 0; c < width; ++c) buf[r * width + c] = widen(row[c]);
      }
      cpu::pairwise_tree(buf.data(), rows, width);
      for (int64_t c = 0; c < width; ++c) out[c0 + c] = buf[c] / static_cast<double>(rows);
    });
  }
}

at::Tensor mean_along_cpu(const at::Tensor& x, int64_t dim) {
  TORCH_CHECK(x.dim() == 2, "lemon::mean_along: x must be 2-D, got ", x.dim(), " dimensions");
  TORCH_CHECK(dim == 0 || dim == 1, "lemon::mean_along: dim must be 0 or 1, got ", dim);
  TORCH_CHECK(x.size(1) <= 1 || x.stride(1) == 1, "lemon::mean_along: x's rows must be contiguous");
  const int64_t n = x.size(dim), width = x.size(1 - dim);
  at::Tensor out = at::empty({width}, x.options().dtype(at::kDouble));
  if (width == 0) return out;
  if (n == 0) return out.fill_(std::numeric_limits<double>::quiet_NaN());  // 0 / 0, as in Python
  switch (x.scalar_type()) {
    case at::kFloat: mean_rows_of<float>(x, dim, out.data_ptr<double>()); break;
    case at::kBFloat16: mean_rows_of<at::BFloat16>(x, dim, out.data_ptr<double>()); break;
    case at::kHalf: mean_rows_of<at::Half>(x, dim, out.data_ptr<double>()); break;
    case at::kDouble: mean_rows_of<double>(x, dim, out.data_ptr<double>()); break;
    default: TORCH_CHECK(false, "lemon::mean_along: fp32, fp64, bf16 or fp16, not ", x.scalar_type());
  }
  return out;
}

}  // namespace
}  // namespace lemon

TORCH_LIBRARY_FRAGMENT(lemon, m) { m.def("mean_along(Tensor x, int dim) -> Tensor"); }

TORCH_LIBRARY_IMPL(lemon, CPU, m) { m.impl("mean_along", &lemon::mean_along_cpu); }
