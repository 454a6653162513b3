// Drives asl-server's Generate RPC with a bounded load: fixed concurrency (N closed-loop clients)
// or Poisson arrivals at a rate (open loop), stopping after num_requests or duration_s, whichever
// comes first. Each in-flight request is one blocking gRPC stream on its own thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "asl/v1/generation.grpc.pb.h"
#include "loadtest/prompts.h"
#include "loadtest/stats.h"

namespace asl::loadtest {

struct LoadOptions {
  int concurrency = 1;      // closed loop: requests in flight (used when rate <= 0)
  double rate = 0;          // > 0: Poisson arrivals, requests per second (open loop)
  int64_t num_requests = 64;
  double duration_s = 0;    // 0: no time bound beyond num_requests (and timeout_s per request)
  double timeout_s = 600;   // gRPC deadline of each request
  uint64_t seed = 0;        // arrivals; request i samples with seed + i
  v1::SamplingParams sampling;  // max_tokens, temperature, ignore_eos, ...
  v1::PruningParams pruning;
};

struct LoadRun {
  std::vector<RequestResult> results;  // in send order
  double duration_s = 0;               // first send to last completion
};

// Runs the load against `stub` with prompts[i % prompts.size()] for request i.
[[nodiscard]] LoadRun RunLoad(const LoadOptions& options, v1::Generation::Stub& stub,
                              const std::vector<Prompt>& prompts);

// One request, measured (also used for warm-up).
[[nodiscard]] RequestResult RunOne(v1::Generation::Stub& stub, const v1::GenerateRequest& request, double timeout_s,
                                   double run_start_s);

}  // namespace asl::loadtest
