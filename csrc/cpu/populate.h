// Pre-faulting a fresh output on all threads: see populate.cpp.
#pragma once

#include <cstdint>

namespace lemon {
namespace cpu {

// Maps in every whole page of [data, data + bytes) for writing, on the calling thread and up to
// `threads - 1` helpers. Returns false where the kernel cannot (not Linux, or older than 5.14:
// no MADV_POPULATE_WRITE); the memory is then left to fault on first touch, as before.
bool populate_pages(void* data, int64_t bytes, int threads);

}  // namespace cpu
}  // namespace lemon
