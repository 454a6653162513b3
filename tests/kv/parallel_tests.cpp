// asl::ParallelFor (engine/common/parallel.h), the loop behind the CPU decode kernels.
#include "engine/common/parallel.h"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <ctime>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace asl {
namespace {

// Counts how often each index of [begin, end) was visited.
std::vector<int> Visits(int threads, int64_t begin, int64_t end, int64_t grain) {
  std::vector<std::atomic<int>> seen(static_cast<size_t>(end + 1));
  ParallelFor(threads, begin, end, grain, [&](int64_t b, int64_t e) {
    ASSERT_LE(begin, b);
    ASSERT_LT(b, e);
    ASSERT_LE(e, end);
    for (int64_t i = b; i < e; ++i) seen[static_cast<size_t>(i)].fetch_add(1);
  });
  std::vector<int> out;
  for (auto& s : seen) out.push_back(s.load());
  return out;
}

TEST(ParallelForTest, VisitsEveryIndexOnceWhateverTheThreadsAndGrain) {
  for (int threads : {1, 2, 3, 4, 8}) {
    for (int64_t grain : {1, 3, 16, 1000}) {
      for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, 0}, {0, 1}, {0, 7}, {5, 9}, {0, 1537}}) {
        const std::vector<int> v = Visits(threads, begin, end, grain);
        for (int64_t i = 0; i <= end; ++i) {
          EXPECT_EQ(v[static_cast<size_t>(i)], (i >= begin && i < end) ? 1 : 0)
              << "index " << i << " threads " << threads << " grain " << grain << " range " << begin << "-" << end;
        }
      }
    }
  }
}

TEST(ParallelForTest, AtMostOneChunkPerGrainAndPerThread) {
  for (auto [threads, grain, want] : {std::tuple<int, int64_t, int>{4, 6, 2}, {4, 1, 4}, {2, 1, 2}, {3, 100, 1}}) {
    std::atomic<int> chunks{0};
    ParallelFor(threads, 0, 10, grain, [&](int64_t, int64_t) { chunks.fetch_add(1); });
    EXPECT_EQ(chunks.load(), want) << threads << " threads, grain " << grain;
  }
}

TEST(ParallelForTest, RethrowsAChunksExceptionAndStaysUsable) {
  EXPECT_THROW(ParallelFor(3, 0, 300, 1,
                           [](int64_t b, int64_t) {
                             if (b == 0) throw std::runtime_error("chunk failed");
                           }),
               std::runtime_error);
  std::vector<int> want(301, 1);
  want[300] = 0;  // Visits counts one index past the end
  EXPECT_EQ(Visits(3, 0, 300, 1), want);
}

TEST(ParallelForTest, NestedCallsRunOnTheCallingThread) {
  std::atomic<int64_t> total{0};
  ParallelFor(2, 0, 4, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      ParallelFor(2, 0, 100, 1, [&](int64_t ib, int64_t ie) { total.fetch_add(ie - ib); });
    }
  });
  EXPECT_EQ(total.load(), 400);
}

TEST(ParallelForTest, ConcurrentCallersEachGetTheirWholeRange) {
  // One caller holds the pool; the others run their loops themselves. All must be complete.
  std::vector<std::thread> callers;
  std::atomic<int> wrong{0};
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int round = 0; round < 200; ++round) {
        std::atomic<int64_t> sum{0};
        ParallelFor(3, 0, 1000, 7, [&](int64_t b, int64_t e) {
          int64_t s = 0;
          for (int64_t i = b; i < e; ++i) s += i;
          sum.fetch_add(s);
        });
        if (sum.load() != 999 * 1000 / 2) wrong.fetch_add(1);
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

// Another process on the cores (the outside test that found decode at ~1 token/s had one busy
// loop on one of 2 cores) deschedules workers at any point: between two regions, after an offer,
// in a chunk. Every region must still be whole, whichever of them the workers took part in.
TEST(ParallelForTest, ManyRegionsUnderCpuContentionVisitEveryIndexOnce) {
  std::atomic<bool> stop{false};
  std::atomic<int> num_started{0};
  std::vector<std::thread> hogs;
  const int num_hogs = 2 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 0; i < num_hogs; ++i) {
    hogs.emplace_back([&] {
      num_started.fetch_add(1);
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  }
  while (num_started.load() < num_hogs) std::this_thread::yield();
  int wrong = 0;
  for (int round = 0; round < 3000; ++round) {
    const int threads = 2 + round % 7;
    const int64_t end = 1 + (round * 37) % 300;
    const std::vector<int> v = Visits(threads, 0, end, 1 + round % 3);
    for (int64_t i = 0; i < end; ++i) wrong += v[static_cast<size_t>(i)] != 1;
  }
  stop = true;
  for (auto& t : hogs) t.join();
  EXPECT_EQ(wrong, 0);
}

// The pool's workers, by the name they give themselves.
std::vector<pid_t> PoolWorkerTids() {
  std::vector<pid_t> tids;
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return tids;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream comm(std::string("/proc/self/task/") + e->d_name + "/comm");
    std::string name;
    if (std::getline(comm, name) && name == "asl-parallel") tids.push_back(static_cast<pid_t>(std::stoi(e->d_name)));
  }
  closedir(dir);
  return tids;
}

std::atomic<int> num_frozen{0};
std::atomic<bool> thaw{false};

// Holds the thread that receives it until `thaw` (only async-signal-safe calls).
void FreezeHandler(int) {
  num_frozen.fetch_add(1);
  while (!thaw.load()) {
    const timespec ms{0, 1000000};
    nanosleep(&ms, nullptr);
  }
  num_frozen.fetch_sub(1);
}

// A worker that never runs (here: held in a signal handler, as one starved by other processes or
// throttled by a CPU quota would be) must not hold up a region: the caller withdraws its offer
// and runs every chunk itself. Waiting for every helper, as the pool once did, never returns here.
TEST(ParallelForTest, RegionsCompleteWhileNoWorkerCanRun) {
  constexpr int kThreads = 8;  // no test here uses more, so the pool has exactly kThreads - 1 workers
  ParallelFor(kThreads, 0, kThreads, 1, [](int64_t, int64_t) {});
  std::vector<pid_t> workers = PoolWorkerTids();
  while (static_cast<int>(workers.size()) < kThreads - 1) {  // a new worker names itself when it first runs
    std::this_thread::yield();
    workers = PoolWorkerTids();
  }
  struct sigaction freeze = {}, old = {};
  freeze.sa_handler = FreezeHandler;
  sigemptyset(&freeze.sa_mask);
  ASSERT_EQ(sigaction(SIGUSR2, &freeze, &old), 0);
  thaw = false;
  int num_signalled = 0;
  for (pid_t tid : workers) num_signalled += tgkill(getpid(), tid, SIGUSR2) == 0;
  ASSERT_EQ(num_signalled, kThreads - 1);
  while (num_frozen.load() < num_signalled) std::this_thread::yield();

  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<bool> off_caller{false};
  for (int threads = 2; threads <= kThreads; ++threads) {
    for (int round = 0; round < 50; ++round) {
      std::vector<int> want(1001, 1);
      want[1000] = 0;
      EXPECT_EQ(Visits(threads, 0, 1000, 1), want) << threads << " threads";
      ParallelFor(threads, 0, 100, 1, [&](int64_t, int64_t) {
        if (std::this_thread::get_id() != caller) off_caller = true;
      });
    }
  }
  EXPECT_FALSE(off_caller.load()) << "a frozen worker ran a chunk";

  // Thawed, they see no stale offer, and the pool is whole again.
  thaw = true;
  while (num_frozen.load() > 0) std::this_thread::yield();
  ASSERT_EQ(sigaction(SIGUSR2, &old, nullptr), 0);
  for (int threads = 2; threads <= kThreads; ++threads) {
    std::vector<int> want(1001, 1);
    want[1000] = 0;
    EXPECT_EQ(Visits(threads, 0, 1000, 1), want) << threads << " threads, thawed";
  }
}

}  // namespace
}  // namespace asl
