// Serving one generation request (chat or legacy completions): JSON body -> GenerateRequest ->
// gRPC stream -> one JSON response or an SSE stream.
//
// A streaming response is produced by cpp-httplib's chunked content provider after the handler has
// returned, so the call's state lives in a shared object owned by the provider and its releaser.
// When a write to the client fails (the client went away) the gRPC call is cancelled with
// ClientContext::TryCancel, and asl-server cancels the request and frees its KV blocks.
#pragma once

#include <atomic>
#include <memory>
#include <string>

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace asl::gateway {

class Backend;
enum class Endpoint;

struct CompletionHandlerOptions {
  std::string model_name;              // --model-name; empty: the backend's model name
  double request_timeout_seconds = 0;  // 0: no deadline
  // --tool-call-parser: "auto" (the format the model's chat template teaches), "hermes",
  // "llama3_json" or "none".
  std::string tool_call_parser = "auto";
  // Generations being served (streams until their last event) and the most at once: beyond it a
  // request gets 429 with Retry-After at once instead of waiting for an HTTP worker. Null: no limit.
  std::shared_ptr<std::atomic<int>> in_flight;
  int max_in_flight = 0;
};

// Handles one POST. Runs on an HTTP worker thread; blocks on the backend until the first response
// message (so that errors found by the server get their HTTP status) or, without streaming, until
// the end.
void HandleCompletion(Endpoint endpoint, Backend& backend, const CompletionHandlerOptions& options,
                      const httplib::Request& req, httplib::Response& res);

}  // namespace asl::gateway
