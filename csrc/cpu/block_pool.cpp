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
  // The blocks in one contiguous share per thread: each thread first works through its own
  // share in order, so its first writes to a fresh output (the page faults) stay in its own
  // stretch of memory and the threads do not contend for the same page tables; a thread that
  // finishes (or the caller, when a helper never comes) then takes blocks from the others'.
  struct alignas(64) Share {  // a cache line each: the counters are written concurrently
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };

  const std::function<void(int64_t)>* work;  // valid while blocks remain unfinished
  int64_t n;
  int helpers;  // how many helper threads may join
  std::vector<Share> shares;
  std::atomic<int64_t> done{0};
  std::atomic<int> joined{0};
  std::exception_ptr error;
  std::mutex error_mutex;

  Job(const std::function<void(int64_t)>& work, int64_t n, int threads)
      : work(&work), n(n), helpers(threads - 1), shares(static_cast<size_t>(threads)) {
    for (int t = 0; t < threads; ++t) {
      shares[t].next = n * t / threads;
      shares[t].end = n * (t + 1) / threads;
    }
  }

  // Claims and runs blocks, its own share first, until none is left. Every claimed block is
  // counted done, so the caller, which waits for done == n, never returns while one still runs.
  void help(int own) {
    const int count = static_cast<int>(shares.size());
    for (int k = 0; k < count; ++k) {
      Share& share = shares[(own + k) % count];
      for (int64_t i = share.next.fetch_add(1); i < share.end; i = share.next.fetch_add(1)) {
        try {
          (*work)(i);
        } catch (...) {
          const std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
        }
        done.fetch_add(1, std::memory_order_release);
      }
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
    auto job = std::make_shared<Job>(work, n, threads);
    if (job->helpers > 0) {
      {
        const std::lock_guard<std::mutex> lock(mutex_);
        while (static_cast<int>(threads_.size()) < job->helpers) threads_.emplace_back([this] { loop(); });
        current_ = job;
        ++generation_;
      }
      wake_.notify_all();
    }
    job->help(0);
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
      if (!job) continue;
      const int index = job->joined.fetch_add(1);  // helper k works from share k + 1 on
      if (index < job->helpers) job->help(index + 1);
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
