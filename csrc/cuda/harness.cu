// A host program that runs the CUDA kernel on one fixed segment pair and prints the output's
// bits, one hex word per element. tests/test_native.py compiles it with nvcc wherever nvcc is
// and runs it where a GPU is, comparing it with the CPU emulation of the same kernel
// (torch.ops.lemon.emulate_cuda_segment) on the same arguments, which the test mirrors.
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "launch.h"

namespace {

constexpr int kSrcRows = 5, kSrcCols = 7, kOutRows = 12, kOutCols = 19;

int check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
  return err != cudaSuccess;
}

}  // namespace

int main() {
  std::vector<float> source(kSrcRows * kSrcCols), col_scale(kOutCols), out(kOutRows * kOutCols, -1.0f);
  for (int i = 0; i < kSrcRows; ++i)
    for (int j = 0; j < kSrcCols; ++j) source[i * kSrcCols + j] = static_cast<float>((i * 7 + j * 3) % 11 - 5) * 0.25f;
  for (int k = 0; k < kOutCols; ++k) col_scale[k] = static_cast<float>(k + 1) * 0.125f;
  const std::vector<int64_t> col_base = {6, 2, kSrcCols + 2, 0, 3, 1, 5, 4};  // a ZERO (free) column

  float *d_source, *d_scale, *d_out;
  int64_t* d_base;
  if (check(cudaMalloc(&d_source, source.size() * 4), "cudaMalloc") ||
      check(cudaMalloc(&d_scale, col_scale.size() * 4), "cudaMalloc") ||
      check(cudaMalloc(&d_out, out.size() * 4), "cudaMalloc") ||
      check(cudaMalloc(&d_base, col_base.size() * 8), "cudaMalloc"))
    return 1;
  cudaMemcpy(d_source, source.data(), source.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(d_scale, col_scale.data(), col_scale.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(d_out, out.data(), out.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(d_base, col_base.data(), col_base.size() * 8, cudaMemcpyHostToDevice);

  lemon::SegmentArgs a{};
  a.source = d_source;
  a.out = d_out;
  a.n_src_rows = kSrcRows;
  a.n_src_cols = kSrcCols;
  a.src_stride = kSrcCols;
  a.out_stride = kOutCols;
  a.row = {0, kOutRows, kSrcRows, 0, 0, nullptr};  // rows: circular, affine
  a.col = {0, kOutCols, 8, -1, 0, d_base};         // columns: a base table repeated, noise along them
  a.col_scale = d_scale;
  a.free_scale = 1e-6;
  a.replica_scale = 7e-7;
  a.noise_axis = 1;
  a.key = 12345u;
  a.n_noise = kOutCols;
  if (check(static_cast<cudaError_t>(lemon::launch_expand_segment(a, lemon::Dtype::float32, nullptr)), "launch") ||
      check(cudaDeviceSynchronize(), "kernel"))
    return 1;
  cudaMemcpy(out.data(), d_out, out.size() * 4, cudaMemcpyDeviceToHost);
  for (float x : out) std::printf("%08x\n", lemon::float_bits(x));
  return 0;
}
