// What one OpenMP parallel region costs, started from the process's first thread and from a second
// thread, after a given amount of serial work. This is the pattern of our engine: one engine thread
// (not the first thread) runs a decode step as a few hundred small parallel regions (at::parallel_for
// in the torch wheel is an inline `#pragma omp parallel`) separated by serial work.
//
// libgomp lets idle workers spin only while the threads it manages fit the CPUs; a pool started by a
// second thread makes them exceed the 2 CPUs of the development machine, workers then sleep in a futex
// after a few hundred spins, and every region pays a wake-up. GOMP_SPINCOUNT and OMP_WAIT_POLICY are
// read from the environment as usual.
//
//   cmake --build build --target asl-omp-region-bench
//   build/bin/asl-omp-region-bench --regions 5000 --gaps 0,20,100
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double Micros(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

// Mean wall time of one two-thread parallel region, each preceded by `gap_us` of serial spinning.
double MeanRegionMicros(int regions, int gap_us) {
  volatile long sink = 0;
  double total = 0;
  for (int i = 0; i < regions; ++i) {
    const auto g = Clock::now();
    while (Micros(g, Clock::now()) < gap_us) {
    }
    const auto t0 = Clock::now();
#pragma omp parallel num_threads(2)
    { sink = sink + omp_get_thread_num(); }
    total += Micros(t0, Clock::now());
  }
  return total / regions;
}

std::vector<int> ParseList(const char* s) {
  std::vector<int> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::atoi(item.c_str()));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int regions = 5000;
  std::vector<int> gaps = {0, 20, 100};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--regions")) {
      regions = std::atoi(argv[i + 1]);
    } else if (!std::strcmp(argv[i], "--gaps")) {
      gaps = ParseList(argv[i + 1]);
    } else {
      std::fprintf(stderr, "usage: %s [--regions N] [--gaps US,US,...]\n", argv[0]);
      return 2;
    }
  }
  if (regions <= 0 || gaps.empty()) {
    std::fprintf(stderr, "--regions must be positive and --gaps non-empty\n");
    return 2;
  }
  const char* spin = std::getenv("GOMP_SPINCOUNT");
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  std::printf("CPUs %u, GOMP_SPINCOUNT=%s, OMP_WAIT_POLICY=%s, %d regions per cell\n\n",
              std::thread::hardware_concurrency(), spin ? spin : "(unset)", policy ? policy : "(unset)",
              regions);
  std::printf("| serial work before each region | first thread, us/region | second thread, us/region |\n");
  std::printf("|---|---|---|\n");
  for (int gap : gaps) {
    const double first = MeanRegionMicros(regions, gap);  // the first thread's pool exists from here on
    double second = 0;
    std::thread t([&] { second = MeanRegionMicros(regions, gap); });
    t.join();
    std::printf("| %d us | %.1f | %.1f |\n", gap, first, second);
  }
  return 0;
}
