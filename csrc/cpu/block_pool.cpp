// See block_pool.h.
#include "block_pool.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace lemon {
namespace cpu {
namespace {

struct Job {
  const std::function<void(int64_t)>* work;  // valid while blocks remain unfinished
  int64_t n;
  int helpers;  // how many helper threads may join
  std::atomic<int64_t> next{0}, done{0};
  std::atomic<int> joined{0};
  std::exception_ptr error;
  std::mutex error_mutex;

  // Claims and runs blocks until none is left. Every claimed block is counted done, so the
  // caller, which waits for done == n, never returns while a block still runs.
  void help() {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      try {
        (*work)(i);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

constexpr auto kLongWait = std::chrono::microseconds(500);  // >> a block's work (~50-100 us)
constexpr int kSoloJobs = 32;

class Pool {
 public:
  // whether the next job should run on the calling thread alone (see run)
  bool solo() {
    int left = solo_jobs_.load();
    while (left > 0 && !solo_jobs_.compare_exchange_weak(left, left - 1)) {
    }
    return left > 0;
  }

  void run(int64_t n, int threads, const std::function<void(int64_t)>& work) {
    auto job = std::make_shared<Job>();
    job->work = &work;
    job->n = n;
    job->helpers = threads - 1;
    if (job->helpers > 0) {
      {
        const std::lock_guard<std::mutex> lock(mutex_);
        while (static_cast<int>(threads_.size()) < job->helpers) threads_.emplace_back([this] { loop(); });
        current_ = job;
        ++generation_;
      }
      wake_.notify_all();
    }
    job->help();
    // only blocks in flight are waited for: spin briefly, then yield the core
    const auto waiting = std::chrono::steady_clock::now();
    for (int spins = 0; job->done.load(std::memory_order_acquire) < n; ++spins)
      if (spins > 1000) std::this_thread::yield();
    // a helper that held a block for long was kept off its core by another process: the next
    // jobs run on this thread alone (no wait for a descheduled helper), then helpers are tried again
    if (std::chrono::steady_clock::now() - waiting > kLongWait) solo_jobs_ = kSoloJobs;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (current_ == job) current_.reset();  // late helpers find nothing to join
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void loop() {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        job = current_;  // null if the job already finished
      }
      if (job && job->joined.fetch_add(1) < job->helpers) job->help();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::shared_ptr<Job> current_;
  uint64_t generation_ = 0;
  std::vector<std::thread> threads_;  // never joined: they live as long as the process
  std::atomic<int> solo_jobs_{0};
};

Pool& pool() {
  // a forked child has the parent's pool object but none of its threads: it makes its own
  // (the old one is left alone: its threads do not exist here to be joined)
  static pid_t owner = 0;
  static Pool* instance = nullptr;
  static std::mutex guard;
  const std::lock_guard<std::mutex> lock(guard);
  if (instance == nullptr || owner != getpid()) {
    instance = new Pool();
    owner = getpid();
  }
  return *instance;
}

}  // namespace

void run_blocks(int64_t n, int threads, const std::function<void(int64_t)>& work) {
  if (n <= 0) return;
  if (threads <= 1 || n == 1 || pool().solo()) {
    for (int64_t i = 0; i < n; ++i) work(i);
    return;
  }
  pool().run(n, static_cast<int>(std::min<int64_t>(threads, n)), work);
}

}  // namespace cpu
}  // namespace lemon
