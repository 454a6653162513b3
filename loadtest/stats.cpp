#include "loadtest/stats.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

namespace asl::loadtest {
namespace {

using nlohmann::json;

json Distribution(const std::vector<double>& seconds) {
  std::vector<double> ms;
  ms.reserve(seconds.size());
  for (double s : seconds) ms.push_back(s * 1e3);
  double sum = 0;
  for (double v : ms) sum += v;
  return {{"count", ms.size()},
          {"mean", ms.empty() ? 0.0 : sum / static_cast<double>(ms.size())},
          {"p50", Percentile(ms, 50)},
          {"p90", Percentile(ms, 90)},
          {"p99", Percentile(ms, 99)},
          {"max", ms.empty() ? 0.0 : *std::max_element(ms.begin(), ms.end())}};
}

}  // namespace

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double rank = p / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (values[hi] - values[lo]) * (rank - static_cast<double>(lo));
}

json Summarize(const std::vector<RequestResult>& results, double duration_s, const Slo& slo) {
  std::vector<double> ttft, tpot, itl, e2e;
  std::map<std::string, int64_t> errors;
  int64_t completed = 0, good = 0, prompt_tokens = 0, output_tokens = 0, kv_kept = 0, kv_full = 0, cached = 0;
  for (const RequestResult& r : results) {
    if (!r.ok) {
      ++errors[r.status_code];
      continue;
    }
    ++completed;
    prompt_tokens += r.num_prompt_tokens;
    output_tokens += r.num_output_tokens;
    cached += r.cached_prompt_tokens;
    kv_kept += r.kv_tokens_kept;
    kv_full += r.kv_tokens_full;
    if (r.ttft_s >= 0) ttft.push_back(r.ttft_s);
    if (r.num_output_tokens > 1) tpot.push_back(r.tpot_s());
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
    e2e.push_back(r.e2e_s);
    const bool ttft_ok = slo.ttft_ms <= 0 || (r.ttft_s >= 0 && r.ttft_s * 1e3 <= slo.ttft_ms);
    const bool tpot_ok = slo.tpot_ms <= 0 || r.tpot_s() * 1e3 <= slo.tpot_ms;
    if (ttft_ok && tpot_ok) ++good;
  }
  const double d = duration_s > 0 ? duration_s : 1e-9;
  return {{"num_requests", results.size()},
          {"completed", completed},
          {"failed", static_cast<int64_t>(results.size()) - completed},
          {"errors", errors},
          {"duration_s", duration_s},
          {"total_prompt_tokens", prompt_tokens},
          {"total_output_tokens", output_tokens},
          {"total_cached_prompt_tokens", cached},
          {"request_throughput", completed / d},
          {"output_token_throughput", output_tokens / d},
          {"total_token_throughput", (prompt_tokens + output_tokens) / d},
          {"slo", {{"ttft_ms", slo.ttft_ms}, {"tpot_ms", slo.tpot_ms}}},
          {"good_requests", good},
          {"goodput", good / d},
          {"kv_kept_ratio", kv_full > 0 ? static_cast<double>(kv_kept) / static_cast<double>(kv_full) : 0.0},
          {"ttft_ms", Distribution(ttft)},
          {"tpot_ms", Distribution(tpot)},
          {"itl_ms", Distribution(itl)},
          {"e2e_ms", Distribution(e2e)}};
}

json ToJson(const RequestResult& r) {
  json j = {{"ok", r.ok},
            {"status", r.status_code},
            {"start_s", r.start_s},
            {"ttft_s", r.ttft_s},
            {"tpot_s", r.tpot_s()},
            {"e2e_s", r.e2e_s},
            {"prompt_tokens", r.num_prompt_tokens},
            {"output_tokens", r.num_output_tokens},
            {"kv_tokens_kept", r.kv_tokens_kept},
            {"kv_tokens_full", r.kv_tokens_full},
            {"selection_layer", r.selection_layer},
            {"server_ttft_s", r.server_ttft_s},
            {"cached_prompt_tokens", r.cached_prompt_tokens}};
  if (!r.ok) j["error"] = r.error;
  return j;
}

std::string FormatTable(const json& s) {
  std::string out;
  char line[256];
  auto row = [&](const char* name, const json& d) {
    std::snprintf(line, sizeof(line), "  %-6s %10.1f %10.1f %10.1f %10.1f %10.1f\n", name, d["mean"].get<double>(),
                  d["p50"].get<double>(), d["p90"].get<double>(), d["p99"].get<double>(), d["max"].get<double>());
    out += line;
  };
  std::snprintf(line, sizeof(line), "requests: %lld completed, %lld failed in %.2f s\n",
                static_cast<long long>(s["completed"].get<int64_t>()), static_cast<long long>(s["failed"].get<int64_t>()),
                s["duration_s"].get<double>());
  out += line;
  for (const auto& [code, n] : s["errors"].items()) out += "  error " + code + ": " + n.dump() + "\n";
  std::snprintf(line, sizeof(line),
                "throughput: %.3f req/s, %.1f output tok/s, %.1f total tok/s; goodput %.3f req/s (%lld good)\n",
                s["request_throughput"].get<double>(), s["output_token_throughput"].get<double>(),
                s["total_token_throughput"].get<double>(), s["goodput"].get<double>(),
                static_cast<long long>(s["good_requests"].get<int64_t>()));
  out += line;
  std::snprintf(line, sizeof(line), "kv kept ratio: %.3f\n", s["kv_kept_ratio"].get<double>());
  out += line;
  std::snprintf(line, sizeof(line), "  %-6s %10s %10s %10s %10s %10s\n", "ms", "mean", "p50", "p90", "p99", "max");
  out += line;
  row("ttft", s["ttft_ms"]);
  row("tpot", s["tpot_ms"]);
  row("itl", s["itl_ms"]);
  row("e2e", s["e2e_ms"]);
  return out;
}

}  // namespace asl::loadtest
