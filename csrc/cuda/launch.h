// The CUDA executor's entry point, declared without CUDA or torch headers (the torch glue in
// ops_cuda.cpp includes this; expand_segment.cu defines it).
#pragma once

#include "../segment.h"

namespace lemon {

// Launches the kernel for one segment pair on `stream` (a cudaStream_t); returns a CUDA error
// code (0: cudaSuccess) for the caller to report.
int launch_expand_segment(const SegmentArgs& args, Dtype dtype, void* stream);

}  // namespace lemon
