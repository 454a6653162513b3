// The numbers behind the layer-sliced prefill's cost model and default budget
// (bench/results/prefill_slices.md), for prompts of n tokens (full policy, one segment):
// - the wall time of one whole prefill layer, against the cost model's estimate; fits
//   t(layer) = a * n + b * n (n + 1) / 2 by least squares, so b / a is the attention pair weight in
//   token-layers, printed beside the weight the runner derives from the model's shape;
// - the whole prefill with whole layers against chunks of --chunk-rows rows (what chunking costs),
//   alternated rep by rep, and the median time of one chunk;
// - one decode step of B sequences at that context.
//   cmake --build build --target asl-prefill-slice-bench
//   build/bin/asl-prefill-slice-bench [model.gguf] [--lengths 256,512,1024,2048,4096] [--reps 3]
//                                     [--decode-batch 1,4,8] [--chunk-rows 512] [--threads N]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/kv/block_pool.h"
#include "engine/kv/dense_kv_cache.h"
#include "engine/model/llama_model.h"
#include "engine/model/model_loader.h"
#include "engine/prune/policy.h"
#include "engine/runner/model_runner.h"

namespace {

using namespace asl;
using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<int64_t> ParseList(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

std::vector<int32_t> Prompt(int64_t n, int64_t seed) {
  at::manual_seed(seed);
  at::Tensor t = at::randint(100, 20000, {n}, at::kInt);
  return std::vector<int32_t>(t.data_ptr<int32_t>(), t.data_ptr<int32_t>() + n);
}

}  // namespace

int main(int argc, char** argv) {
  std::string path = ASL_DEFAULT_MODEL_PATH;
  std::vector<int64_t> lengths = {256, 512, 1024, 2048, 4096};
  std::vector<int64_t> batches = {1, 4, 8};
  int reps = 3, threads = 0;
  int64_t chunk_rows = 512;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--lengths") lengths = ParseList(next());
    else if (a == "--decode-batch") batches = ParseList(next());
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--chunk-rows") chunk_rows = std::stoll(next());
    else if (!a.empty() && a[0] != '-') path = a;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (threads > 0) at::set_num_threads(threads);
  auto loaded = model::LoadModel(path, at::kCPU, at::kFloat);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  model::LlamaModel m(loaded->config, std::move(loaded->weights));
  const auto& c = m.config();
  const int L = static_cast<int>(c.num_layers);
  PruningParams params;
  params.policy = PolicyKind::kFull;
  if (!ResolvePruningParams(&params, L).ok()) return 1;

  std::printf("model %s, %d layers, threads %d\n", c.name.c_str(), L, at::get_num_threads());
  std::printf("| prompt n | layer ms (median of %d x %d layers) | prefill s, whole layers | prefill s, chunks of %lld "
              "| chunk ms (median) | decode step ms, B = ",
              reps, L, static_cast<long long>(chunk_rows));
  for (int64_t b : batches) std::printf("%lld ", static_cast<long long>(b));
  std::printf("|\n|---|---|---|---|---|---|\n");
  std::vector<double> ns, ts;
  const runner::PrefillOptions whole_layers{0}, chunked{chunk_rows};
  for (int64_t n : lengths) {
    std::vector<double> layer_ms, chunk_ms, whole_s, chunked_s;
    std::vector<double> decode_ms(batches.size(), 0);
    for (int r = 0; r < reps; ++r) {
      // A prefill timed step by step (one layer, or one chunk, per Advance) with fresh state.
      auto timed = [&](const runner::PrefillOptions& options, std::vector<double>* per_step) {
        kv::DenseKvCache cache(L);
        runner::ModelRunner runner(&m, &cache, options);
        prune::PruningPolicy policy(params, L, c.num_kv_heads, n);
        if (!cache.AddSequence(0).ok()) std::exit(1);
        auto job = runner.StartPrefill({{0, Prompt(n, 7 + 100 * r), &policy}});
        if (!job.ok()) std::exit(1);
        const auto start = Clock::now();
        while (!job->done()) {
          const auto t0 = Clock::now();
          auto slice = runner.Advance(*job, /*budget=*/per_step ? 1e-9 : 0);
          if (!slice.ok()) {
            std::fprintf(stderr, "%s\n", slice.status().ToString().c_str());
            std::exit(1);
          }
          if (per_step) per_step->push_back(Ms(Clock::now() - t0));
        }
        return Ms(Clock::now() - start) / 1e3;
      };
      timed(whole_layers, &layer_ms);
      timed(chunked, &chunk_ms);
      // Whole prefills, alternated.
      whole_s.push_back(timed(whole_layers, nullptr));
      chunked_s.push_back(timed(chunked, nullptr));

      // Decode as the server runs it: the paged pool and its decode attention kernel.
      auto pool = kv::BlockPool::Create(kv::BlockPoolOptions{L, c.num_kv_heads, c.head_dim, at::kFloat, at::kCPU, 16,
                                                             /*num_blocks=*/0, /*bytes=*/int64_t{2} << 30});
      if (!pool.ok()) return 1;
      kv::PagedKvCache cache(pool->get());
      runner::ModelRunner runner(&m, &cache);
      const int64_t max_b = *std::max_element(batches.begin(), batches.end());
      std::vector<std::unique_ptr<prune::PruningPolicy>> policies;
      std::vector<runner::PrefillSeq> seqs;
      for (int64_t b = 0; b < max_b; ++b) {
        policies.push_back(std::make_unique<prune::PruningPolicy>(params, L, c.num_kv_heads, n));
        if (!cache.AddSequence(b).ok()) return 1;
        seqs.push_back({b, Prompt(n, 7 + b + 100 * r), policies.back().get()});
      }
      if (!runner.Prefill(seqs).ok()) return 1;
      for (size_t bi = 0; bi < batches.size(); ++bi) {
        std::vector<runner::DecodeSeq> dec;
        for (int64_t b = 0; b < batches[bi]; ++b) dec.push_back({b, 1000, n});
        // The median of 5 steps; each appends one token.
        std::vector<double> steps;
        for (int k = 0; k < 5; ++k) {
          for (auto& d : dec) d.position = n + k + static_cast<int64_t>(bi) * 5;
          const auto t0 = Clock::now();
          if (!runner.Decode(dec).ok()) return 1;
          steps.push_back(Ms(Clock::now() - t0));
        }
        decode_ms[bi] += Median(steps) / reps;
      }
    }
    const double med = Median(layer_ms);
    ns.push_back(static_cast<double>(n));
    ts.push_back(med);
    std::printf("| %lld | %.2f | %.3f | %.3f | %.2f | ", static_cast<long long>(n), med, Median(whole_s),
                Median(chunked_s), Median(chunk_ms));
    for (double d : decode_ms) std::printf("%.2f ", d);
    std::printf("|\n");
  }
  // Least squares for t = a * n + b * n (n + 1) / 2 (no intercept).
  double s11 = 0, s12 = 0, s22 = 0, y1 = 0, y2 = 0;
  for (size_t i = 0; i < ns.size(); ++i) {
    const double x1 = ns[i], x2 = ns[i] * (ns[i] + 1) / 2;
    s11 += x1 * x1;
    s12 += x1 * x2;
    s22 += x2 * x2;
    y1 += x1 * ts[i];
    y2 += x2 * ts[i];
  }
  const double det = s11 * s22 - s12 * s12;
  const double a = (y1 * s22 - y2 * s12) / det, b = (s11 * y2 - s12 * y1) / det;
  kv::DenseKvCache cache(L);
  runner::ModelRunner runner(&m, &cache);
  const double model_weight = runner.cost_model().attention_pair_weight;
  std::printf("\nfit: layer ms = %.3g * n + %.3g * n(n+1)/2 -> %.4f ms per token-layer, measured pair weight %.3g\n", a,
              b, a, b / a);
  std::printf("cost model pair weight (shape x kAttentionFlopCost): %.3g -> measured / model = %.2f\n", model_weight,
              (b / a) / model_weight);
  for (size_t i = 0; i < ns.size(); ++i) {
    const double cost = runner.cost_model().SegmentLayerCost(static_cast<int64_t>(ns[i]));
    std::printf("n %6.0f: measured %.2f ms, cost %.0f token-layers -> %.4f ms per unit\n", ns[i], ts[i], cost,
                ts[i] / cost);
  }
  return 0;
}
