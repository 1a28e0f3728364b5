// The CPU executor's parallel loop: blocks of work claimed by the calling thread and up to
// torch.get_num_threads() - 1 helper threads, each from its own contiguous share first.
//
// Why not at::parallel_for: an OpenMP parallel region ends at a barrier that waits for every
// thread of the team, including one that another process keeps off its core and that has no
// work left to do (the others took it). With ~200 operators per model that costs a scheduler
// time slice each: beside a PyTorch process spinning on both cores an expansion ran 4-7x
// slower than quiet. Here the caller waits only for blocks in flight: helpers that have not
// woken up by the time the blocks run out are not waited for, and the caller alone would
// finish the job at single-thread speed. When even that wait is long (a helper descheduled in
// the middle of a block), the next jobs run on the caller alone for a while: on a machine
// whose cores are taken, one thread that never waits beats two that wait for each other. The
// thread count follows torch.set_num_threads.
#pragma once

#include <cstdint>
#include <functional>

namespace lemon {
namespace cpu {

// Runs work(i) for every i < n, on the calling thread and up to `threads - 1` helpers; returns
// when all n are done; rethrows the first exception a block threw.
void run_blocks(int64_t n, int threads, const std::function<void(int64_t)>& work);

}  // namespace cpu
}  // namespace lemon
