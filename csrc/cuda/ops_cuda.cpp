// torch.ops.lemon.expand_segment for CUDA tensors: the checked arguments, the device guard and
// the current stream, then the kernel (expand_segment.cu). Built only where torch has CUDA.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include "../args.h"
#include "launch.h"

namespace lemon {
namespace {

void expand_segment_cuda(LEMON_SEGMENT_PARAMS) {
  const c10::cuda::CUDAGuard guard(source.device());
  // index values are not read back here (that would synchronize): lemon/segments.py made them
  const SegmentArgs a = segment_args(LEMON_SEGMENT_ARGS, /*check_values=*/false);
  TORCH_CHECK(a.row.first >= 0 || row_base.device() == source.device(), "lemon: row_base must be on ", source.device());
  TORCH_CHECK(a.col.first >= 0 || col_base.device() == source.device(), "lemon: col_base must be on ", source.device());
  const int err = launch_expand_segment(a, dtype_of(source), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "lemon: the CUDA kernel failed to launch: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

}  // namespace
}  // namespace lemon

TORCH_LIBRARY_IMPL(lemon, CUDA, m) { m.impl("expand_segment", &lemon::expand_segment_cuda); }
