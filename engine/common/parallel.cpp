#include "engine/common/parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ASL_CPU_RELAX() _mm_pause()
#else
#define ASL_CPU_RELAX() std::this_thread::yield()
#endif

namespace asl {
namespace {

// How long an idle worker spins before it sleeps: long enough to span the serial work between two
// regions of a decode step, short enough to give the core back between steps.
constexpr int64_t kSpinMicros = 2000;

thread_local bool in_parallel_region = false;

// A process-wide pool, grown on demand. Each worker has its own slot: the caller hands a job to
// worker i by writing the job's number into its ticket, and waits for the same number in its done.
// Workers not given the job never read its state, so a job's fields stay the caller's until every
// helper has finished, and idle workers beyond a call's thread count stay asleep.
class Pool {
 public:
  // Runs the job on the caller and `threads - 1` workers; false if another thread holds the pool
  // (the caller then runs the loop itself).
  bool Run(int threads, int64_t begin, int64_t end, int64_t chunk,
           const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    const int helpers = threads - 1;
    while (static_cast<int>(slots_.size()) < helpers) {
      slots_.push_back(std::make_unique<Slot>());
      Slot* slot = slots_.back().get();
      std::thread([this, slot] { Loop(*slot); }).detach();
    }
    ++job_;
    fn_ = &fn;
    end_ = end;
    chunk_ = chunk;
    error_ = nullptr;
    next_.store(begin, std::memory_order_relaxed);
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int i = 0; i < helpers; ++i) slots_[i]->ticket.store(job_, std::memory_order_release);
      wake = sleepers_ > 0;
    }
    if (wake) cv_.notify_all();
    Work();
    for (int i = 0; i < helpers; ++i) {
      while (slots_[i]->done.load(std::memory_order_acquire) != job_) ASL_CPU_RELAX();
    }
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  struct Slot {
    std::atomic<uint64_t> ticket{0};
    std::atomic<uint64_t> done{0};
  };

  // Takes chunks until the range is done.
  void Work() {
    in_parallel_region = true;
    for (;;) {
      const int64_t b = next_.fetch_add(chunk_, std::memory_order_relaxed);
      if (b >= end_) break;
      try {
        (*fn_)(b, std::min(end_, b + chunk_));
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu_);
        if (!error_) error_ = std::current_exception();
      }
    }
    in_parallel_region = false;
  }

  // Spins for a ticket, sleeps after kSpinMicros without one.
  void Loop(Slot& slot) {
    uint64_t seen = 0;
    for (;;) {
      auto idle_since = std::chrono::steady_clock::now();
      int spins = 0;
      while (slot.ticket.load(std::memory_order_acquire) == seen) {
        ASL_CPU_RELAX();
        if (++spins < 256) continue;
        spins = 0;
        if (std::chrono::steady_clock::now() - idle_since < std::chrono::microseconds(kSpinMicros)) continue;
        std::unique_lock<std::mutex> lock(mu_);
        ++sleepers_;
        cv_.wait(lock, [&] { return slot.ticket.load(std::memory_order_acquire) != seen; });
        --sleepers_;
        idle_since = std::chrono::steady_clock::now();
      }
      seen = slot.ticket.load(std::memory_order_acquire);
      Work();
      slot.done.store(seen, std::memory_order_release);
    }
  }

  std::mutex run_mu_;  // one job at a time
  std::vector<std::unique_ptr<Slot>> slots_;

  std::mutex mu_;  // with cv_: sleeping workers
  std::condition_variable cv_;
  int sleepers_ = 0;

  // The current job, written by the caller before it hands out tickets.
  uint64_t job_ = 0;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t end_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  std::mutex error_mu_;
  std::exception_ptr error_;
};

Pool& GlobalPool() {
  static Pool* pool = new Pool();  // never destroyed: its detached workers live to the process's end
  return *pool;
}

}  // namespace

void ParallelFor(int threads, int64_t begin, int64_t end, int64_t grain,
                 const std::function<void(int64_t, int64_t)>& fn) {
  if (begin >= end) return;
  const int64_t range = end - begin;
  grain = std::max<int64_t>(1, grain);
  const int64_t max_chunks = (range + grain - 1) / grain;
  const int n = static_cast<int>(std::min<int64_t>(std::max(1, threads), max_chunks));
  if (n <= 1 || in_parallel_region) {
    fn(begin, end);
    return;
  }
  // As at::parallel_for: one contiguous chunk per thread.
  const int64_t chunk = (range + n - 1) / n;
  if (!GlobalPool().Run(n, begin, end, chunk, fn)) fn(begin, end);
}

}  // namespace asl
