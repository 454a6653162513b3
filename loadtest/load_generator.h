// Drives asl-server's Generate RPC with a bounded load: fixed concurrency (N closed-loop clients)
// or Poisson arrivals at a rate (open loop), stopping after num_requests or duration_s, whichever
// comes first. Each in-flight request is one blocking stream (gRPC, or HTTP/SSE in the OpenAI
// mode) on its own thread.
#pragma once

#include <cstdint>
#include <functional>
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
  double timeout_s = 600;   // deadline of each request (gRPC) or read timeout (HTTP)
  uint64_t seed = 0;        // arrivals; request i samples with seed + i
  v1::SamplingParams sampling;  // max_tokens, temperature, ignore_eos, ...
  v1::PruningParams pruning;
};

struct LoadRun {
  std::vector<RequestResult> results;  // in send order
  double duration_s = 0;               // first send to last completion
};

// Sends request `index` and measures it; run_start_s is the run's start on the Now() clock.
using SendFn = std::function<RequestResult(int64_t index, double run_start_s)>;

// The load shape (concurrency or rate, num_requests, duration_s, seed of arrivals) with any
// transport: the gRPC mode below and the OpenAI-HTTP mode (openai_client.h) share it.
[[nodiscard]] LoadRun RunLoad(const LoadOptions& options, const SendFn& send);

// The gRPC request `index`: the prompt, sampling (seed + index), pruning, id "loadtest-<index>".
[[nodiscard]] v1::GenerateRequest MakeRequest(const LoadOptions& options, const Prompt& prompt, int64_t index);

// One gRPC request, measured (also used for warm-up).
[[nodiscard]] RequestResult RunOne(v1::Generation::Stub& stub, const v1::GenerateRequest& request, double timeout_s,
                                   double run_start_s);

}  // namespace asl::loadtest
