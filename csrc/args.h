// From the operator's tensors to a SegmentArgs, checked: the one place that trusts nothing the
// caller passes (lemon/segments.py makes these arguments; other callers may not).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "segment.h"

namespace lemon {

// The operator's parameters (its schema in ops.cpp), once for every implementation.
#define LEMON_SEGMENT_PARAMS                                                                          \
  const at::Tensor &source, const at::Tensor &row_base, const at::Tensor &col_base,                 \
      const std::optional<at::Tensor>&row_scale, const std::optional<at::Tensor>&col_scale,          \
      const std::optional<at::Tensor>&row_means, const std::optional<at::Tensor>&col_means,          \
      const std::optional<at::Tensor>&total_mean, const std::optional<at::Tensor>&next_index,        \
      c10::IntArrayRef row_segment, c10::IntArrayRef col_segment, int64_t noise_axis, int64_t key,   \
      int64_t n_noise, double free_scale, double replica_scale, const at::Tensor &out
#define LEMON_SEGMENT_ARGS                                                                           \
  source, row_base, col_base, row_scale, col_scale, row_means, col_means, total_mean, next_index,   \
      row_segment, col_segment, noise_axis, key, n_noise, free_scale, replica_scale, out

inline Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::float32;
    case at::kDouble: return Dtype::float64;
    case at::kBFloat16: return Dtype::bfloat16;
    case at::kHalf: return Dtype::float16;
    default: TORCH_CHECK(false, "lemon: expand_segment handles float32, float64, bfloat16 and float16, not ", t.scalar_type());
  }
}

inline at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// an axis's segment from [start, length, period, first, origin] and its base indices
inline AxisSegment axis_segment(const char* axis, c10::IntArrayRef segment, const at::Tensor& base,
                                int64_t out_length, int64_t n_source, bool check_values) {
  TORCH_CHECK(segment.size() == 5, "lemon: ", axis, "_segment is [start, length, period, first, origin], got ",
              segment.size(), " values");
  AxisSegment s{segment[0], segment[1], segment[2], segment[3], segment[4], nullptr};
  TORCH_CHECK(s.start >= 0 && s.length >= 0 && s.start + s.length <= out_length, "lemon: the ", axis,
              " segment [", s.start, ", ", s.start + s.length, ") is outside the output's ", out_length, " ", axis, "s");
  TORCH_CHECK(s.period >= 1 && s.origin >= 0, "lemon: a ", axis, " segment needs period >= 1 and origin >= 0");
  const int64_t bases = s.bases();
  if (s.first >= 0) {
    TORCH_CHECK(s.first + bases <= n_source, "lemon: the affine ", axis, " base ", s.first, " + ", bases,
                " passes the source's ", n_source, " ", axis, "s");
    return s;
  }
  TORCH_CHECK(base.scalar_type() == at::kLong && base.is_contiguous() && base.dim() == 1 && base.numel() >= bases,
              "lemon: ", axis, "_base must be a contiguous int64 vector of at least ", bases, " indices");
  if (check_values && bases > 0) {
    const auto range = base.narrow(0, 0, bases).aminmax();
    const int64_t lo = std::get<0>(range).item<int64_t>(), hi = std::get<1>(range).item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi <= n_source + 2, "lemon: ", axis, "_base holds extended indices in [", lo, ", ", hi,
                "], outside [0, ", n_source + 2, "]");
  }
  s.base = base.data_ptr<int64_t>();
  return s;
}

inline bool uses_mean(const AxisSegment& s, const at::Tensor& base, int64_t n_source) {
  return s.first < 0 && s.bases() > 0 && base.narrow(0, 0, s.bases()).eq(n_source).any().item<bool>();
}

inline const void* side_input(const char* name, const std::optional<at::Tensor>& t, at::ScalarType type,
                              int64_t at_least, const at::Device& device) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == type && t->is_contiguous() && t->numel() >= at_least && t->device() == device,
              "lemon: ", name, " must be a contiguous ", type, " tensor of at least ", at_least, " elements on ", device);
  return t->data_ptr();
}

// `row_means_in_pass`: the executor takes each source row's mean itself (the CPU one), so MEAN
// columns may come without row_means.
inline SegmentArgs segment_args(LEMON_SEGMENT_PARAMS, bool check_values, bool row_means_in_pass = false) {
  TORCH_CHECK(source.dim() == 2 && out.dim() == 2, "lemon: source and out are 2-D views");
  TORCH_CHECK(source.scalar_type() == out.scalar_type(), "lemon: out must have the source's dtype (",
              source.scalar_type(), "), got ", out.scalar_type());
  TORCH_CHECK(source.device() == out.device(), "lemon: source and out must be on one device");
  TORCH_CHECK(source.stride(1) == 1 || source.size(1) <= 1, "lemon: the source view's rows must be contiguous");
  TORCH_CHECK(out.stride(1) == 1 || out.size(1) <= 1, "lemon: out's rows must be contiguous");
  dtype_of(source);
  TORCH_CHECK(noise_axis >= -1 && noise_axis <= 1, "lemon: noise_axis is 0, 1 or -1 (none), got ", noise_axis);
  TORCH_CHECK(key >= 0 && key < (int64_t(1) << 32), "lemon: key is a 32-bit word, got ", key);
  SegmentArgs a{};
  a.source = source.data_ptr();
  a.out = out.data_ptr();
  a.n_src_rows = source.size(0);
  a.n_src_cols = source.size(1);
  a.src_stride = source.stride(0);
  a.out_stride = out.stride(0);
  a.row = axis_segment("row", row_segment, row_base, out.size(0), a.n_src_rows, check_values);
  a.col = axis_segment("col", col_segment, col_base, out.size(1), a.n_src_cols, check_values);
  const auto acc = compute_type(source);
  const auto device = source.device();
  a.row_scale = side_input("row_scale", row_scale, acc, out.size(0), device);
  a.col_scale = side_input("col_scale", col_scale, acc, out.size(1), device);
  a.row_means = side_input("row_means", row_means, acc, a.n_src_rows, device);
  a.col_means = side_input("col_means", col_means, acc, a.n_src_cols, device);
  a.total_mean = side_input("total_mean", total_mean, acc, 1, device);
  a.free_scale = free_scale;
  a.replica_scale = replica_scale;
  a.noise_axis = static_cast<int>(noise_axis);
  a.key = static_cast<uint32_t>(key);
  a.n_noise = n_noise;
  if (check_values) {  // MEAN indices read the means of the other axis: they must be there
    const bool mean_row = uses_mean(a.row, row_base, a.n_src_rows), mean_col = uses_mean(a.col, col_base, a.n_src_cols);
    TORCH_CHECK(!mean_row || a.col_means, "lemon: a MEAN row needs col_means");
    TORCH_CHECK(!mean_col || a.row_means || row_means_in_pass, "lemon: a MEAN column needs row_means");
    TORCH_CHECK(!(mean_row && mean_col) || a.total_mean, "lemon: MEAN rows and columns need total_mean");
  }
  if (next_index.has_value()) {
    TORCH_CHECK(noise_axis >= 0, "lemon: next_index is for a noise axis");
    a.next_index = static_cast<const int64_t*>(
        side_input("next_index", next_index, at::kLong, out.size(noise_axis), device));
    if (check_values && next_index->numel() > 0) {
      const auto range = next_index->aminmax();
      TORCH_CHECK(std::get<0>(range).item<int64_t>() >= -1 && std::get<1>(range).item<int64_t>() < n_noise,
                  "lemon: next_index holds indices outside [-1, n_noise)");
    }
  }
  return a;
}

}  // namespace lemon
