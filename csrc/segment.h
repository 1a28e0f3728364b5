// One segment pair of a plan's window: what every compiled executor of lemon receives.
//
// The host side (lemon/segments.py) cuts each view axis of a TensorPlan's window into segments
// that repeat a base pattern of extended source indices with a period P: the window positions
// start .. start + length - 1 of the axis, position p taking the extended index base[p % P].
// A segment pair is a block of the output; its base tile (B_r = min(P_r, L_r) rows by B_c
// columns) holds every distinct value, and each base element (b, q) has K_r x K_c replicas
// (K = ceil(L / P)), at positions (k_r P_r + b, k_c P_c + q) that exist. The formula each
// element follows is lemon/plan.py's, in the same operation order:
//
//   out = ((S~[ext_r, ext_c] * row_scale) * col_scale) + noise
//
// with the noise of the noise axis a: counter = class(other axis) * n_noise + global index
// along a; a replica gets c(current) - c(next replica), a free weight (ZERO on a) c * free, an
// element whose other-axis class is ZERO gets +0. In a *closed* segment every replica group
// lies in it, each member's next one period on and the last member's the first (base) one;
// otherwise (next_index != null) the next replica's global index comes from a table.
//
// This header is plain C++ with LEMON_HD functions: the CUDA kernel runs expand_base_element
// once per thread, and the extension's CPU emulation of that kernel (used by the tests on
// machines without a GPU) runs the very same function for every base element.
#pragma once

#include "noise.h"

namespace lemon {

// The storage dtype of source and output (the compute dtype follows: fp64 for fp64, else fp32).
enum class Dtype : int { float32 = 0, float64 = 1, bfloat16 = 2, float16 = 3 };

struct AxisSegment {
  int64_t start;   // first window position of the segment
  int64_t length;  // positions in the segment
  int64_t period;  // P: the base pattern's length
  int64_t first;   // >= 0: base[p] = first + p (no table); -1: read base
  int64_t origin;  // global index of window position 0 along this axis
  const int64_t* base;  // P extended indices (unused when first >= 0)

  LEMON_HD int64_t bases() const { return period < length ? period : length; }
  LEMON_HD int64_t replicas() const { return (length + period - 1) / period; }
  LEMON_HD int64_t ext(int64_t b) const { return first >= 0 ? first + b : base[b]; }
};

struct SegmentArgs {
  const void* source;  // the source view [n_src_rows, n_src_cols], row stride src_stride
  void* out;           // the window's output block, row stride out_stride
  int64_t n_src_rows, n_src_cols, src_stride, out_stride;
  AxisSegment row, col;
  const void* row_scale;  // compute dtype, per window row; null: none
  const void* col_scale;  // compute dtype, per window column; null: none
  const void* row_means;  // compute dtype [n_src_rows]: each source row's mean (MEAN columns)
  const void* col_means;  // compute dtype [n_src_cols]: each source column's mean (MEAN rows)
  const void* total_mean; // compute dtype [1]: both MEAN
  double free_scale, replica_scale;  // rounded once to the compute dtype by the executor
  const int64_t* next_index;  // per noise-axis window position, the global next replica; null: closed
  int noise_axis;             // 0, 1, or -1 for no noise
  uint32_t key;
  int64_t n_noise;            // the noise axis's full length (the counter's class stride)
};

// S~[er, ec] (extended indices): ZERO wins over ONE, ONE over MEAN, as lemon/plan.py defines S~.
template <typename T>
LEMON_HD typename Format<T>::acc extended_value(const SegmentArgs& a, int64_t er, int64_t ec) {
  using acc = typename Format<T>::acc;
  const int64_t rows = a.n_src_rows, cols = a.n_src_cols;
  if (er == rows + 2 || ec == cols + 2) return acc(0);
  if (er == rows + 1 || ec == cols + 1) return acc(1);
  if (er < rows && ec < cols) return Format<T>::load(static_cast<const T*>(a.source)[er * a.src_stride + ec]);
  if (er == rows && ec == cols) return static_cast<const acc*>(a.total_mean)[0];
  if (er == rows) return static_cast<const acc*>(a.col_means)[ec];
  return static_cast<const acc*>(a.row_means)[er];
}

// One output element at segment positions (pos_r, pos_c), in the reference's operation order.
template <typename T>
LEMON_HD void write_element(const SegmentArgs& a, T* out, typename Format<T>::acc value,
                            const typename Format<T>::acc* row_scale, const typename Format<T>::acc* col_scale,
                            int64_t pos_r, int64_t pos_c, bool add_noise, typename Format<T>::acc noise) {
  typename Format<T>::acc element = value;
  if (row_scale) element = element * row_scale[a.row.start + pos_r];
  if (col_scale) element = element * col_scale[a.col.start + pos_c];
  if (add_noise) element = element + noise;
  out[(a.row.start + pos_r) * a.out_stride + a.col.start + pos_c] = Format<T>::store(element);
}

// Every replica of base element (b, q) of the segment pair: the source read once, each
// centred integer along the noise axis hashed once and carried to the next replica.
template <typename T>
LEMON_HD void expand_base_element(const SegmentArgs& a, int64_t b, int64_t q) {
  using acc = typename Format<T>::acc;
  const AxisSegment& R = a.row;
  const AxisSegment& C = a.col;
  const int64_t er = R.ext(b), ec = C.ext(q);
  const acc value = extended_value<T>(a, er, ec);
  const acc* row_scale = static_cast<const acc*>(a.row_scale);
  const acc* col_scale = static_cast<const acc*>(a.col_scale);
  T* out = static_cast<T*>(a.out);

  const bool noisy = a.noise_axis >= 0;
  const AxisSegment& N = a.noise_axis == 0 ? R : C;  // the noise axis and the other one
  const AxisSegment& O = a.noise_axis == 0 ? C : R;
  const int64_t base_n = a.noise_axis == 0 ? b : q;
  const int64_t ext_n = a.noise_axis == 0 ? er : ec;
  const int64_t ext_o = a.noise_axis == 0 ? ec : er;
  const int64_t n_src_n = a.noise_axis == 0 ? a.n_src_rows : a.n_src_cols;
  const int64_t n_src_o = a.noise_axis == 0 ? a.n_src_cols : a.n_src_rows;
  const bool free = ext_n == n_src_n + 2;        // a weight that reads a known zero
  const bool other_zero = ext_o == n_src_o + 2;  // must stay exactly zero
  const uint64_t class_offset = static_cast<uint64_t>(ext_o) * static_cast<uint64_t>(a.n_noise) +
                                static_cast<uint64_t>(N.origin + N.start);
  const acc free_scale = static_cast<acc>(a.free_scale);
  const acc replica_scale = static_cast<acc>(a.replica_scale);

  if (!noisy) {
    for (int64_t pos_r = b; pos_r < R.length; pos_r += R.period)
      for (int64_t pos_c = q; pos_c < C.length; pos_c += C.period)
        write_element<T>(a, out, value, row_scale, col_scale, pos_r, pos_c, false, acc(0));
    return;
  }
  const int32_t c_first = centred(a.key, class_offset + static_cast<uint64_t>(base_n));
  int32_t c_current = c_first;
  for (int64_t position_n = base_n; position_n < N.length; position_n += N.period) {  // noise-axis replicas
    int32_t c_next;
    if (a.next_index) {
      c_next = centred(a.key, static_cast<uint64_t>(ext_o) * static_cast<uint64_t>(a.n_noise) +
                                  static_cast<uint64_t>(a.next_index[N.start + position_n]));
    } else if (position_n + N.period < N.length) {
      c_next = centred(a.key, class_offset + static_cast<uint64_t>(position_n + N.period));
    } else {
      c_next = c_first;  // the last replica's next is the first
    }
    acc noise = free ? static_cast<acc>(c_current) * free_scale
                     : static_cast<acc>(c_current - c_next) * replica_scale;
    if (other_zero) noise = acc(0);
    for (int64_t position_o = (a.noise_axis == 0 ? q : b); position_o < O.length; position_o += O.period) {
      if (a.noise_axis == 0) write_element<T>(a, out, value, row_scale, col_scale, position_n, position_o, true, noise);
      else write_element<T>(a, out, value, row_scale, col_scale, position_o, position_n, true, noise);
    }
    // the next replica's integer is this one's next time, unless the table sent us elsewhere
    c_current = a.next_index ? centred(a.key, class_offset + static_cast<uint64_t>(position_n + N.period)) : c_next;
  }
}

}  // namespace lemon
