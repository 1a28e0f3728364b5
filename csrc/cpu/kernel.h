// The CPU executor's inner work, free of torch headers (a test compiles it alone with
// -fopt-info-vec to check that the hot loops vectorize). ops.cpp owns the parallel loop.
#pragma once

#include <string>
#include <vector>

#include "../segment.h"

namespace lemon {
namespace cpu {

// A stretch of a block's columns: `length` columns from `start` reading the source columns
// ext, ext + 1, ... (ext < n_src_cols), or all the one special column ext.
struct Run {
  int64_t start, length, ext;
};

// Per worker thread, reused from block to block: the base values of a block's row and the
// centred integers and noise of its replicas (sized by the block, not by the tensor).
struct Workspace {
  std::vector<double> values, noise;  // acc-typed through reinterpret (fp32 uses half of each)
  std::vector<double> tree;           // a source row widened to fp64 for its mean (MEAN columns)
  std::vector<int32_t> centred;
  std::vector<uint32_t> classes;
  std::vector<uint8_t> zero_col;
  std::vector<Run> runs;
};

// The base tile [b0, b1) x [q0, q1) of one segment pair and all its replicas, into a.out.
using BlockFn = void (*)(const SegmentArgs& a, Dtype dtype, int64_t b0, int64_t b1, int64_t q0, int64_t q1,
                         Workspace& w);

void expand_block_generic(const SegmentArgs&, Dtype, int64_t, int64_t, int64_t, int64_t, Workspace&);
#if defined(__x86_64__) && defined(__GNUC__)
void expand_block_avx2(const SegmentArgs&, Dtype, int64_t, int64_t, int64_t, int64_t, Workspace&);
void expand_block_avx512(const SegmentArgs&, Dtype, int64_t, int64_t, int64_t, int64_t, Workspace&);
#endif

// The widest variant this CPU runs, and its name ("avx512", "avx2", "generic").
BlockFn best_block_fn(const char** name);
// The variant of that name, or null if this CPU (or build) cannot run it.
BlockFn block_fn_named(const std::string& name);
const char* isa_name(const std::string& name);  // the same name, as a static string
std::vector<std::string> supported_isas();         // widest first

}  // namespace cpu
}  // namespace lemon
