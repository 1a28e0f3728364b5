// A fresh output's pages, mapped in before the executor writes it.
//
// Every byte of a new output is written once, and with 4 KiB pages its first touch of each page
// is a fault: a trap, the kernel's fault path, a zeroed page. On the 2-core VM those faults were
// the largest single cost of expanding GPT-2-small (~200k faults, 0.23-0.30 s of system time on
// two threads). MADV_POPULATE_WRITE (Linux 5.14) maps a whole range in one call, without a trap
// per page; the pages are still zeroed, so the saving is the per-fault overhead. One call on one
// thread took about as long as the parallel faults it replaced, so the range is cut into blocks
// on the block pool, each thread from its own contiguous share (its own page tables). A block is
// 256 KiB (~60 us of kernel work), well under the pool's long wait (block_pool.h). With 2 MiB
// blocks (~0.5 ms each) populate's share of a GPT-2 expansion was 0.13-0.18 s, against
// 0.04-0.11 s with 256 KiB ones; the likely reason: a wait that long for a helper's last block
// puts the operators after it on one thread.
#include "populate.h"

#include "block_pool.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // linux/mman.h, 5.14; older libc headers do not name it
#endif

namespace lemon {
namespace cpu {

bool populate_pages(void* data, int64_t bytes, int threads) {
#if defined(__linux__)
  constexpr int64_t kBlock = int64_t(256) << 10;
  const int64_t page = sysconf(_SC_PAGESIZE);
  const auto address = reinterpret_cast<uintptr_t>(data);
  const int64_t start = static_cast<int64_t>((address + page - 1) / page * page);
  const int64_t stop = static_cast<int64_t>((address + bytes) / page * page);
  if (stop <= start) return true;  // no whole page: nothing to map
  const int64_t first = start / kBlock, last = (stop - 1) / kBlock;  // the blocks it touches
  std::atomic<bool> refused{false};
  run_blocks(last - first + 1, threads, [&](int64_t i) {
    if (refused.load(std::memory_order_relaxed)) return;
    const int64_t lo = std::max(start, (first + i) * kBlock), hi = std::min(stop, (first + i + 1) * kBlock);
    if (madvise(reinterpret_cast<void*>(lo), static_cast<size_t>(hi - lo), MADV_POPULATE_WRITE) != 0)
      refused = true;  // EINVAL from a kernel without it; ENOMEM/EFAULT leave faults to the writes
  });
  return !refused.load();
#else
  (void)data;
  (void)bytes;
  (void)threads;
  return false;
#endif
}

}  // namespace cpu
}  // namespace lemon
