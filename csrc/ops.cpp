// lemon's operators: torch.ops.lemon.expand_segment (CPU here, CUDA in cuda/ops_cuda.cpp) and
// torch.ops.lemon.emulate_cuda_segment (the CUDA kernel's per-thread code run on the CPU, so
// machines without a GPU test the CUDA algorithm's bits). Both write `out` in place; their
// fake implementations are registered from Python (lemon/native.py).
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <atomic>
#include <functional>

#include "args.h"
#include "cpu/block_pool.h"
#include "cpu/kernel.h"
#include "cpu/populate.h"

namespace lemon {
namespace {

constexpr int64_t kBlockElements = int64_t(1) << 17;  // output elements per claimed block of work
constexpr int64_t kTileElements = int64_t(1) << 14;   // a block's columns times their replicas

// The block function in use: the widest the CPU runs, unless set_cpu_isa chose another (tests
// run every variant this CPU can, since each must give the same bits).
struct ChosenBlockFn {
  std::atomic<cpu::BlockFn> fn;
  std::atomic<const char*> name;
  ChosenBlockFn() {
    const char* best = nullptr;
    fn = cpu::best_block_fn(&best);
    name = best;
  }
};

ChosenBlockFn& chosen_block_fn() {
  static ChosenBlockFn chosen;
  return chosen;
}

cpu::BlockFn block_fn() { return chosen_block_fn().fn.load(); }

void expand_segment_cpu(LEMON_SEGMENT_PARAMS) {
  // row_means may be None where MEAN columns are: the block function then takes them in its pass
  const SegmentArgs a = segment_args(LEMON_SEGMENT_ARGS, /*check_values=*/true, /*row_means_in_pass=*/true);
  const Dtype dtype = dtype_of(source);
  const int64_t rows = a.row.bases(), cols = a.col.bases();
  if (rows == 0 || cols == 0) return;
  // a block: base rows [b0, b1) by base columns [q0, q1), with all their replicas; the columns
  // (times their replicas) fit a cache-sized tile, the rows make it ~kBlockElements elements
  const int64_t col_reps = a.col.replicas(), row_reps = a.row.replicas();
  const int64_t tile = std::min<int64_t>(cols, std::max<int64_t>(256, kTileElements / col_reps));
  const int64_t per_row = row_reps * col_reps * tile;
  const int64_t band = std::max<int64_t>(1, kBlockElements / per_row);
  const int64_t row_blocks = (rows + band - 1) / band, col_blocks = (cols + tile - 1) / tile;
  const cpu::BlockFn fn = block_fn();
  // torch's intra-op thread count (torch.set_num_threads), on lemon's own helpers: see block_pool.h
  cpu::run_blocks(row_blocks * col_blocks, at::get_num_threads(), [&](int64_t i) {
    thread_local cpu::Workspace w;  // buffers sized by a block, reused by each thread
    const int64_t b0 = (i / col_blocks) * band, q0 = (i % col_blocks) * tile;
    fn(a, dtype, b0, std::min(b0 + band, rows), q0, std::min(q0 + tile, cols), w);
  });
}

template <typename T>
void emulate(const SegmentArgs& a) {
  const int64_t rows = a.row.bases(), cols = a.col.bases();
  at::parallel_for(0, rows, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t q = 0; q < cols; ++q) expand_base_element<T>(a, b, q);  // one CUDA thread's work
  });
}

void emulate_cuda_segment(LEMON_SEGMENT_PARAMS) {
  const SegmentArgs a = segment_args(LEMON_SEGMENT_ARGS, /*check_values=*/true);
  switch (dtype_of(source)) {
    case Dtype::float32: emulate<float>(a); break;
    case Dtype::float64: emulate<double>(a); break;
    case Dtype::bfloat16: emulate<bf16>(a); break;
    case Dtype::float16: emulate<f16>(a); break;
  }
}

}  // namespace

// What this build holds, for lemon.available_backends() and `lemon info`.
pybind11::dict build_info() {
  pybind11::dict info;
  info["cpu_isa"] = chosen_block_fn().name.load();
  info["cpu_isas"] = cpu::supported_isas();
#if defined(LEMON_WITH_CUDA)
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  return info;
}

}  // namespace lemon

TORCH_LIBRARY(lemon, m) {
  const char* schema =
      "(Tensor source, Tensor row_base, Tensor col_base, Tensor? row_scale, Tensor? col_scale, "
      "Tensor? row_means, Tensor? col_means, Tensor? total_mean, Tensor? next_index, int[] row_segment, "
      "int[] col_segment, int noise_axis, int key, int n_noise, float free_scale, float replica_scale, "
      "Tensor(a!) out) -> ()";
  m.def((std::string("expand_segment") + schema).c_str());
  m.def((std::string("emulate_cuda_segment") + schema).c_str());
}

TORCH_LIBRARY_IMPL(lemon, CPU, m) {
  m.impl("expand_segment", &lemon::expand_segment_cpu);
  m.impl("emulate_cuda_segment", &lemon::emulate_cuda_segment);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lemon's compiled executors; importing this module registers torch.ops.lemon.*";
  m.def("build_info", &lemon::build_info, "what this build of the extension holds");
  m.def(
      "set_cpu_isa",
      [](const std::string& name) {
        auto& chosen = lemon::chosen_block_fn();
        const std::string previous = chosen.name.load();
        const lemon::cpu::BlockFn fn = lemon::cpu::block_fn_named(name);
        TORCH_CHECK(fn, "lemon: this CPU cannot run the '", name, "' loops; it runs ",
                    lemon::cpu::supported_isas());
        chosen.fn = fn;
        chosen.name = lemon::cpu::isa_name(name);
        return previous;
      },
      "use the CPU loops compiled for one instruction set (tests compare them); returns the previous");
  m.def(
      "populate",
      [](const at::Tensor& t) {
        TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "lemon: populate takes a contiguous CPU tensor");
        pybind11::gil_scoped_release no_gil;  // other Python threads run on while the pages map in
        return lemon::cpu::populate_pages(t.data_ptr(), t.nbytes(), at::get_num_threads());
      },
      "map in the whole pages of a fresh CPU tensor on torch's thread count (see csrc/cpu/populate.cpp); "
      "False where the kernel cannot");
}
