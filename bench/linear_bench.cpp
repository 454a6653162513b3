// The projections of one decode step of a GGUF model, timed per kernel: at::linear (MKL) over the
// float32 copies against the streaming kernel over the GGUF blocks (engine/model/linear.h) with
// float32 and with int8 activations (ASL_CPU_ISA caps the instruction set), for
// several numbers of rows (sequences decoding together). Both compute every projection of every
// layer and the LM head once per step; attention and the small ops are left out.
//   cmake --build build --target asl-linear-bench
//   build/bin/asl-linear-bench [model.gguf] [--threads N] [--rows 1,8,32,64,128] [--reps 20]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <sstream>
#include <string>
#include <vector>

#include "engine/model/linear.h"
#include "engine/model/model_loader.h"

namespace {

using asl::model::PackedWeight;

struct Projection {
  at::Tensor w;
  PackedWeight packed;
};

double CpuMs() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = ASL_DEFAULT_MODEL_PATH;
  int threads = 1, reps = 20;
  std::vector<int64_t> rows = {1, 2, 8, 32, 64, 128};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (a == "--rows" && i + 1 < argc) {
      rows.clear();
      std::stringstream ss(argv[++i]);
      for (std::string t; std::getline(ss, t, ',');) rows.push_back(std::stoll(t));
    } else if (a.rfind("--", 0) != 0) model = a;
    else {
      std::fprintf(stderr, "usage: %s [model.gguf] [--threads N] [--rows 1,8,32] [--reps N]\n", argv[0]);
      return 2;
    }
  }
  at::set_num_threads(threads);
  auto loaded = asl::model::LoadModel(model, at::kCPU, at::kFloat);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  const auto& mw = loaded->weights;
  std::vector<Projection> step;
  int64_t float_bytes = 0, packed_bytes = 0;
  for (const auto& l : mw.layers) {
    for (auto p : {std::make_pair(l.wq, l.packed_wq), std::make_pair(l.wk, l.packed_wk), std::make_pair(l.wv, l.packed_wv),
                   std::make_pair(l.wo, l.packed_wo), std::make_pair(l.w_gate, l.packed_gate),
                   std::make_pair(l.w_up, l.packed_up), std::make_pair(l.w_down, l.packed_down)}) {
      step.push_back({p.first, p.second});
    }
  }
  step.push_back({mw.lm_head, mw.packed_lm_head});
  for (const Projection& p : step) {
    if (!p.packed.defined()) {
      std::fprintf(stderr, "a projection has no packed copy (not Q8_0/Q4_0/Q4_1): nothing to compare\n");
      return 1;
    }
    float_bytes += p.w.numel() * 4;
    packed_bytes += p.packed.bytes.numel();
  }
  std::printf("model %s, %d threads, %zu projections per step: float32 %.1f MB, blocks %.1f MB; median of %d steps\n\n",
              model.c_str(), threads, step.size(), float_bytes / 1e6, packed_bytes / 1e6, reps);
  std::printf("| rows | at::linear float32 ms (CPU ms) | streaming float32 ms (CPU ms) | streaming int8 ms (CPU ms) | "
              "speed-up float32 / int8 (wall, vs at::linear) | blocks GB/s float32 / int8 |\n"
              "|---|---|---|---|---|---|\n");
  for (int64_t m : rows) {
    std::vector<at::Tensor> xs;
    for (const Projection& p : step) xs.push_back(at::randn({m, p.w.size(1)}));
    // Wall and process CPU time per step: on a shared machine the CPU time of a one-thread run is
    // the one to compare (time-slicing by other processes does not count in it).
    enum Kernel { kAtLinear, kFloat32, kInt8 };
    auto time = [&](Kernel kernel) {
      std::vector<double> wall, cpu;
      for (int r = 0; r < reps + 2; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        const double c0 = CpuMs();
        for (size_t i = 0; i < step.size(); ++i) {
          at::Tensor y = kernel == kAtLinear ? at::linear(xs[i], step[i].w)
                         : asl::model::StreamingLinear(xs[i], step[i].packed, {},
                                                       kernel == kInt8 ? asl::model::Activations::kInt8
                                                                       : asl::model::Activations::kFloat32);
        }
        if (r < 2) continue;  // two warm-up steps
        cpu.push_back(CpuMs() - c0);
        wall.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      return std::make_pair(Median(wall), Median(cpu));
    };
    const auto [fw, fc] = time(kAtLinear);
    const auto [sw, sc] = time(kFloat32);
    const auto [iw, ic] = time(kInt8);
    std::printf("| %lld | %.2f (%.2f) | %.2f (%.2f) | %.2f (%.2f) | %.2fx / %.2fx | %.1f / %.1f |\n",
                static_cast<long long>(m), fw, fc, sw, sc, iw, ic, fw / sw, fw / iw, packed_bytes / sw / 1e6,
                packed_bytes / iw / 1e6);
    std::fflush(stdout);
  }
  return 0;
}
