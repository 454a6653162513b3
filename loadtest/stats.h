// Per-request measurements of the load test and their summary (percentiles, throughput, goodput).
// Conventions follow vLLM's benchmark_serving: TTFT = send to first generated token; TPOT =
// (e2e - TTFT) / (output tokens - 1); ITL = gaps between consecutive token-bearing messages;
// goodput = completed requests per second that met every SLO given.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace asl::loadtest {

struct RequestResult {
  bool ok = false;
  std::string status_code;      // gRPC code name ("OK", "RESOURCE_EXHAUSTED", ...), or HTTP mode's (openai_client.h)
  std::string error;            // the status message when not ok
  double start_s = 0;           // send time, seconds since the run started
  double ttft_s = -1;           // -1: no token arrived
  double e2e_s = 0;
  int64_t num_prompt_tokens = 0;
  int64_t num_output_tokens = 0;
  int64_t kv_tokens_kept = 0;   // from the server's completion message
  int64_t kv_tokens_full = 0;
  int32_t selection_layer = -1;
  double server_ttft_s = 0;     // the server's own TTFT (from submission inside the server)
  int64_t cached_prompt_tokens = 0;  // HTTP mode: usage.prompt_tokens_details.cached_tokens
  std::vector<double> itl_s;    // inter-token latencies

  double tpot_s() const {
    return num_output_tokens > 1 && ttft_s >= 0 ? (e2e_s - ttft_s) / static_cast<double>(num_output_tokens - 1) : 0;
  }
};

// The clock of the measurements: seconds on std::chrono::steady_clock.
[[nodiscard]] double Now();

struct Slo {
  double ttft_ms = 0;  // 0: no SLO
  double tpot_ms = 0;
};

// Linear interpolation between closest ranks (numpy's default); 0 for an empty sample.
[[nodiscard]] double Percentile(std::vector<double> values, double p);

// The summary: counts, errors by code, throughput, goodput and latency distributions in ms.
[[nodiscard]] nlohmann::json Summarize(const std::vector<RequestResult>& results, double duration_s, const Slo& slo);

// One result as JSON (for --json's per-request list).
[[nodiscard]] nlohmann::json ToJson(const RequestResult& r);

// A fixed-width table of a summary, for people.
[[nodiscard]] std::string FormatTable(const nlohmann::json& summary);

}  // namespace asl::loadtest
