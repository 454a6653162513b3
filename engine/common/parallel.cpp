#include "engine/common/parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
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
// How many pauses a caller spins for a helper's chunk before it yields the core between checks: a
// helper that is running finishes within a chunk's time; one that is not may be waiting for this
// very core (the kernel put it here, or another process holds its own), and spinning would keep it
// off until the scheduler's next tick.
constexpr int kCallerSpins = 256;

thread_local bool in_parallel_region = false;

// A process-wide pool, grown on demand. Each worker has its own slot. The caller offers the job to
// `threads - 1` workers; a worker takes the offer with an atomic exchange and only then reads the
// job. Chunks are taken dynamically, so the caller alone can finish the range: once its own Work()
// runs out of chunks it withdraws, with the same exchange, every offer still standing, and waits
// only for the helpers that took theirs. A helper that is not running (descheduled, preempted by
// another process, asleep and not yet woken) so costs the region nothing, where waiting for it
// cost up to a scheduler time slice per region, hundreds of times per decode step. The job's
// fields stay the caller's until Run returns: every offer is then taken and finished, or withdrawn.
// A sleeping worker waits on its offer word itself (std::atomic::wait, a futex), so the hand-off
// takes no lock: a worker stopped anywhere outside a chunk holds nothing a caller needs.
class Pool {
 public:
  // Runs the job on the caller and up to `threads - 1` workers; false if another thread holds the
  // pool (the caller then runs the loop itself).
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
    fn_ = &fn;
    end_ = end;
    chunk_ = chunk;
    error_ = nullptr;
    next_.store(begin, std::memory_order_relaxed);
    for (int i = 0; i < helpers; ++i) {
      Slot& s = *slots_[i];
      s.done.store(0, std::memory_order_relaxed);
      // seq_cst store, then load of `sleeping`, against the worker's store of `sleeping`, then
      // load of `offer`: at least one of the two sees the other's store, so no wake-up is lost.
      s.offer.store(1, std::memory_order_seq_cst);
      if (s.sleeping.load(std::memory_order_seq_cst)) s.offer.notify_one();
    }
    Work();
    for (int i = 0; i < helpers; ++i) {
      Slot& s = *slots_[i];
      if (s.offer.exchange(0, std::memory_order_acq_rel) == 1) continue;  // withdrawn: it never starts
      for (int spins = 0; s.done.load(std::memory_order_acquire) == 0; ++spins) {
        if (spins < kCallerSpins) ASL_CPU_RELAX();
        else std::this_thread::yield();
      }
    }
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  struct alignas(64) Slot {
    std::atomic<uint32_t> offer{0};  // 1: the current job is offered to this worker
    std::atomic<uint32_t> done{0};   // 1: the worker finished the job it took
    std::atomic<bool> sleeping{false};
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

  // Spins for an offer, sleeps after kSpinMicros without one; takes it unless it was withdrawn.
  void Loop(Slot& slot) {
    pthread_setname_np(pthread_self(), "asl-parallel");  // for top -H, perf, gdb (and the tests)
    for (;;) {
      auto idle_since = std::chrono::steady_clock::now();
      int spins = 0;
      while (slot.offer.load(std::memory_order_relaxed) == 0) {
        ASL_CPU_RELAX();
        if (++spins < 256) continue;
        spins = 0;
        // The core may be the caller's, with its serial work between two regions waiting for it.
        std::this_thread::yield();
        if (std::chrono::steady_clock::now() - idle_since < std::chrono::microseconds(kSpinMicros)) continue;
        slot.sleeping.store(true, std::memory_order_seq_cst);
        if (slot.offer.load(std::memory_order_seq_cst) == 0) slot.offer.wait(0, std::memory_order_relaxed);
        slot.sleeping.store(false, std::memory_order_relaxed);
        idle_since = std::chrono::steady_clock::now();
      }
      if (slot.offer.exchange(0, std::memory_order_acq_rel) == 0) continue;  // the caller withdrew it
      Work();
      slot.done.store(1, std::memory_order_release);
    }
  }

  std::mutex run_mu_;  // one job at a time
  std::vector<std::unique_ptr<Slot>> slots_;

  // The current job, written by the caller before it makes the offers.
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
