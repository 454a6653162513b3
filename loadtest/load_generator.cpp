#include "loadtest/load_generator.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>

#include <grpcpp/grpcpp.h>

namespace asl::loadtest {
namespace {

using Clock = std::chrono::steady_clock;

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "OTHER";
  }
}

}  // namespace

v1::GenerateRequest MakeRequest(const LoadOptions& options, const Prompt& prompt, int64_t index) {
  v1::GenerateRequest r;
  r.set_request_id("loadtest-" + std::to_string(index));
  if (!prompt.token_ids.empty()) {
    for (int32_t t : prompt.token_ids) r.mutable_token_ids()->add_ids(t);
  } else {
    r.set_prompt(prompt.text);
  }
  *r.mutable_sampling() = options.sampling;
  r.mutable_sampling()->set_seed(options.seed + static_cast<uint64_t>(index));
  *r.mutable_pruning() = options.pruning;
  return r;
}

RequestResult RunOne(v1::Generation::Stub& stub, const v1::GenerateRequest& request, double timeout_s,
                     double run_start_s) {
  RequestResult r;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)));
  const double t0 = Now();
  r.start_s = t0 - run_start_s;
  double last = t0;
  auto reader = stub.Generate(&ctx, request);
  v1::GenerateResponse msg;
  bool complete = false;
  while (reader->Read(&msg)) {
    const double t = Now();
    if (msg.has_chunk() && msg.chunk().token_ids_size() > 0) {
      if (r.ttft_s < 0) {
        r.ttft_s = t - t0;
      } else {
        r.itl_s.push_back(t - last);
      }
      last = t;
      r.num_output_tokens += msg.chunk().token_ids_size();
    } else if (msg.has_complete()) {
      const v1::GenerateComplete& c = msg.complete();
      complete = true;
      r.num_prompt_tokens = c.usage().prompt_tokens();
      r.num_output_tokens = c.usage().completion_tokens();
      r.kv_tokens_kept = c.usage().kv_tokens_kept();
      r.kv_tokens_full = c.usage().kv_tokens_full();
      r.selection_layer = c.pruning().selection_layer();
      r.server_ttft_s = c.timings().ttft_seconds();
    }
  }
  const grpc::Status st = reader->Finish();
  r.e2e_s = Now() - t0;
  r.ok = st.ok() && complete;
  r.status_code = st.ok() && !complete ? "NO_COMPLETION" : CodeName(st.error_code());
  r.error = st.error_message();
  return r;
}

LoadRun RunLoad(const LoadOptions& options, const SendFn& send) {
  LoadRun run;
  run.results.resize(static_cast<size_t>(options.num_requests));
  std::vector<bool> sent(run.results.size(), false);
  std::mutex mu;  // guards `sent` and the results' slots handed out
  const double start = Now();
  const double stop_at = options.duration_s > 0 ? start + options.duration_s : 1e300;
  auto run_index = [&](int64_t i) {
    RequestResult r = send(i, start);
    std::lock_guard<std::mutex> lock(mu);
    run.results[static_cast<size_t>(i)] = std::move(r);
    sent[static_cast<size_t>(i)] = true;
  };

  std::vector<std::thread> threads;
  if (options.rate > 0) {
    // Open loop: exponential gaps between sends, one thread per request.
    std::mt19937_64 rng(options.seed ^ 0x9e3779b97f4a7c15ull);
    std::exponential_distribution<double> gap(options.rate);
    double next = start;
    for (int64_t i = 0; i < options.num_requests; ++i) {
      if (next >= stop_at) break;
      std::this_thread::sleep_until(Clock::time_point(std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(next))));
      threads.emplace_back(run_index, i);
      next += gap(rng);
    }
  } else {
    // Closed loop: `concurrency` clients, each sends its next request when the previous ends.
    std::atomic<int64_t> next{0};
    for (int c = 0; c < std::max(1, options.concurrency); ++c) {
      threads.emplace_back([&] {
        for (int64_t i = next++; i < options.num_requests && Now() < stop_at; i = next++) run_index(i);
      });
    }
  }
  for (std::thread& t : threads) t.join();
  run.duration_s = Now() - start;
  // Drop the slots never sent (the duration ran out).
  std::vector<RequestResult> done;
  for (size_t i = 0; i < run.results.size(); ++i) {
    if (sent[i]) done.push_back(std::move(run.results[i]));
  }
  run.results = std::move(done);
  return run;
}

}  // namespace asl::loadtest
