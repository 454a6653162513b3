// Paged decode attention of one decode step, timed per KV storage dtype and instruction set: the
// shape of the default model (30 layers, 9 query heads, 3 KV heads, head dim 64, blocks of 16),
// B sequences of `context` tokens each, one PagedDecodeAttention call per layer over a pool whose
// blocks are scattered (as a pool in use is). Reports ms per step (all layers) and the KV bytes
// read per second, beside a plain memory read of the same bytes (the floor). ASL_BENCH_CONTIGUOUS=1
// gives each sequence consecutive blocks instead (what a fresh pool hands out).
//   cmake --build build --target asl-attention-bench
//   build/bin/asl-attention-bench [--threads N] [--contexts 512,2048,4096] [--batch 1,4] [--reps 10]
//                                 [--dtypes float32,bfloat16,float16] [--isa avx512,avx2,baseline]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/common/cpu_isa.h"
#include "engine/common/parallel.h"
#include "engine/kv/paged_attention.h"

namespace {

constexpr int64_t kLayers = 30, kH = 9, kHkv = 3, kD = 64, kBlock = 16;

std::vector<int64_t> ParseList(const char* s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::atoll(item.c_str()));
  return out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double NowMs() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Reads `bytes` of a buffer with all threads (sum of floats): this machine's read bandwidth.
double ReadGBs(int threads, int reps) {
  const int64_t n = int64_t{512} << 20 >> 2;  // 512 MiB of floats
  std::vector<float> buf(static_cast<size_t>(n), 1.0f);
  std::vector<double> ms;
  volatile float sink = 0;
  for (int r = 0; r < reps; ++r) {
    const double t0 = NowMs();
    asl::ParallelFor(threads, 0, n, n / threads / 4 + 1, [&](int64_t b, int64_t e) {
      float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent sums: the compiler vectorises the loop
      for (int64_t i = b; i + 8 <= e; i += 8) {
        for (int j = 0; j < 8; ++j) a[j] += buf[static_cast<size_t>(i + j)];
      }
      sink = sink + a[0] + a[7];
    });
    ms.push_back(NowMs() - t0);
  }
  return static_cast<double>(n) * 4 / (Median(ms) * 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 10;
  std::vector<int64_t> contexts = {512, 2048, 4096}, batches = {1, 4};
  std::string dtypes = "float32,bfloat16,float16", isas = "avx512,avx2,baseline";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--contexts") && i + 1 < argc) contexts = ParseList(argv[++i]);
    else if (!std::strcmp(argv[i], "--batch") && i + 1 < argc) batches = ParseList(argv[++i]);
    else if (!std::strcmp(argv[i], "--dtypes") && i + 1 < argc) dtypes = argv[++i];
    else if (!std::strcmp(argv[i], "--isa") && i + 1 < argc) isas = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--threads N] [--contexts 512,2048] [--batch 1,4] [--reps N] [--dtypes float32,bfloat16,float16] [--isa avx512,avx2,baseline]\n", argv[0]);
      return 2;
    }
  }
  at::set_num_threads(threads);
  std::printf("# threads %d, detected ISA %s; memory read %.1f GB/s (all threads, 512 MiB)\n", threads,
              asl::CpuIsaName(asl::DetectedCpuIsa()), ReadGBs(threads, 5));
  std::printf("| context | batch | KV dtype | ISA | ms per step (%lld layers) | KV MB read per step | GB/s |\n",
              static_cast<long long>(kLayers));
  std::printf("|---|---|---|---|---|---|---|\n");
  std::mt19937 rng(1);
  for (int64_t ctx : contexts) {
    for (int64_t B : batches) {
      const int64_t blocks_per_seq = (ctx + kBlock - 1) / kBlock;
      const int64_t num_blocks = kLayers * B * blocks_per_seq;
      std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
      std::iota(ids.begin(), ids.end(), 0);
      if (!std::getenv("ASL_BENCH_CONTIGUOUS")) std::shuffle(ids.begin(), ids.end(), rng);
      std::vector<at::Tensor> tables;
      for (int64_t l = 0; l < kLayers; ++l) {
        at::Tensor t = at::empty({B, blocks_per_seq}, at::kInt);
        std::memcpy(t.data_ptr<int32_t>(), ids.data() + l * B * blocks_per_seq, B * blocks_per_seq * 4);
        tables.push_back(t);
      }
      const at::Tensor lengths = at::full({B}, ctx, at::kLong);
      const at::Tensor q = at::randn({B, kH, kD});
      for (auto [dt, dt_name] : {std::pair{at::kFloat, "float32"}, {at::kBFloat16, "bfloat16"}, {at::kHalf, "float16"}}) {
        if (dtypes.find(dt_name) == std::string::npos) continue;
        const at::Tensor k = at::randn({num_blocks, kHkv, kBlock, kD}).to(dt);
        const at::Tensor v = at::randn({num_blocks, kHkv, kBlock, kD}).to(dt);
        const double mb = 2.0 * B * ctx * kHkv * kD * at::elementSize(dt) * kLayers / 1e6;
        for (asl::CpuIsa isa : {asl::CpuIsa::kAvx512, asl::CpuIsa::kAvx2, asl::CpuIsa::kBaseline}) {
          if (isa > asl::DetectedCpuIsa() || isas.find(asl::CpuIsaName(isa)) == std::string::npos) continue;
          asl::SetCpuIsaCap(isa);
          std::vector<double> ms;
          for (int r = 0; r < reps + 1; ++r) {
            const double t0 = NowMs();
            for (int64_t l = 0; l < kLayers; ++l) {
              at::Tensor o = asl::kv::PagedDecodeAttention(q, k, v, tables[static_cast<size_t>(l)], lengths, 0.125);
            }
            if (r > 0) ms.push_back(NowMs() - t0);  // the first run warms the pool
          }
          const double med = Median(ms);
          std::printf("| %lld | %lld | %s | %s | %.2f | %.1f | %.1f |\n", static_cast<long long>(ctx),
                      static_cast<long long>(B), dt_name, asl::CpuIsaName(isa), med, mb, mb / med);
          std::fflush(stdout);
        }
      }
      asl::SetCpuIsaCap(asl::CpuIsa::kAvx512Vnni);
    }
  }
  return 0;
}
