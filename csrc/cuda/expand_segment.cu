// The CUDA executor: the Triton kernel's algorithm (lemon_kernels/kernel.py) in CUDA C++.
//
// One thread per base element of a segment pair (see ../segment.h): it reads its source
// element once and writes every replica, carrying each centred integer along the noise axis to
// the next replica; consecutive threads own consecutive base columns, so each replica's
// stores are coalesced. Compiled with --fmad=false: a fused multiply-add would round once
// where the reference rounds twice. No torch headers: a test compiles this file with the
// installed nvcc on machines without a GPU, and the extension's CPU emulation runs the same
// per-thread function (expand_base_element) there.
#include <cuda_runtime.h>

#include "launch.h"

namespace lemon {

constexpr int kThreadsX = 128;  // base columns per block: four warps along the contiguous axis
constexpr int kThreadsY = 2;    // base rows per block

template <typename T>
__global__ void __launch_bounds__(kThreadsX * kThreadsY) expand_segment_kernel(SegmentArgs args) {
  // rows on grid.x (up to 2^31 - 1 blocks: a vocabulary-sized axis fits), columns on grid.y
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kThreadsY + threadIdx.y;
  const int64_t q = static_cast<int64_t>(blockIdx.y) * kThreadsX + threadIdx.x;
  if (b < args.row.bases() && q < args.col.bases()) expand_base_element<T>(args, b, q);
}

int launch_expand_segment(const SegmentArgs& args, Dtype dtype, void* stream) {
  const int64_t rows = args.row.bases(), cols = args.col.bases();
  if (rows == 0 || cols == 0) return 0;
  const dim3 block(kThreadsX, kThreadsY);
  const dim3 grid(static_cast<unsigned>((rows + kThreadsY - 1) / kThreadsY),
                  static_cast<unsigned>((cols + kThreadsX - 1) / kThreadsX));
  if (grid.y > 65535u) return static_cast<int>(cudaErrorInvalidConfiguration);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case Dtype::float32: expand_segment_kernel<float><<<grid, block, 0, s>>>(args); break;
    case Dtype::float64: expand_segment_kernel<double><<<grid, block, 0, s>>>(args); break;
    case Dtype::bfloat16: expand_segment_kernel<bf16><<<grid, block, 0, s>>>(args); break;
    case Dtype::float16: expand_segment_kernel<f16><<<grid, block, 0, s>>>(args); break;
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace lemon
