// asl::ParallelFor (engine/common/parallel.h), the loop behind the CPU decode kernels.
#include "engine/common/parallel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
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

}  // namespace
}  // namespace asl
