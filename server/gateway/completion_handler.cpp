#include "server/gateway/completion_handler.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <random>

#include "server/gateway/backend.h"
#include "server/gateway/connection_watch.h"
#include "server/gateway/errors.h"
#include "server/gateway/openai_request.h"
#include "server/gateway/openai_response.h"

namespace asl::gateway {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string NewRequestId(Endpoint endpoint) {
  // A per-process random prefix keeps ids unique across gateway restarts and replicas.
  static const std::string prefix = [] {
    std::random_device rd;
    char buf[16];
    std::snprintf(buf, sizeof(buf), "%08x", rd());
    return std::string(buf);
  }();
  static std::atomic<uint64_t> counter{0};
  return std::string(endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-") + prefix + "-" +
         std::to_string(counter.fetch_add(1) + 1);
}

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void SendError(httplib::Response& res, const ApiError& e) {
  for (const auto& [name, value] : ErrorHeaders(e)) res.set_header(name, value);
  SendJson(res, e.http_status, ToJson(e));
}

void SetDeadline(grpc::ClientContext* ctx, double seconds) {
  if (seconds > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6)));
  }
}

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// One streaming call, shared by the content provider and its releaser (both run on the HTTP worker
// thread that serves the connection, one after the other).
struct StreamCall {
  explicit StreamCall(ResponseContext c) : ctx(std::move(c)), logprobs(ctx) {}
  ~StreamCall() { Cancel(); }

  // Cancels the gRPC call unless it already finished; idempotent.
  void Cancel() {
    if (finished || !reader) return;
    grpc_ctx.TryCancel();
    v1::GenerateResponse ignored;
    while (reader->Read(&ignored)) {
    }
    (void)reader->Finish();
    finished = true;
  }

  ResponseContext ctx;
  bool include_usage = false;
  grpc::ClientContext grpc_ctx;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
  std::optional<v1::GenerateResponse> pending;  // read before the headers were sent
  LogprobsBuilder logprobs;
  size_t text_offset = 0;
  int64_t num_tokens = 0;
  bool role_sent = false;
  bool finished = false;  // reader->Finish() was called
  Clock::time_point start = Clock::now();
};

// Produces the next SSE event(s). Returns false when the client is gone (the call is cancelled).
bool NextEvents(StreamCall& call, httplib::DataSink& sink) {
  auto write = [&](const std::string& s) {
    if (sink.write(s.data(), s.size())) return true;
    spdlog::info("{}: client disconnected after {} tokens; cancelling the backend call", call.ctx.id,
                 call.num_tokens);
    call.Cancel();
    return false;
  };
  if (!call.role_sent && call.ctx.endpoint == Endpoint::kChatCompletions) {
    call.role_sent = true;
    if (!write(SseEvent(RoleChunkJson(call.ctx)))) return false;
  }
  v1::GenerateResponse msg;
  bool got = false;
  if (call.pending) {
    msg = std::move(*call.pending);
    call.pending.reset();
    got = true;
  } else {
    got = call.reader->Read(&msg);
  }
  if (got && msg.has_chunk()) {
    const v1::GenerateChunk& chunk = msg.chunk();
    call.num_tokens += chunk.token_ids_size();
    call.logprobs.Append(chunk, call.text_offset);
    call.text_offset += chunk.text().size();
    json lp = call.logprobs.Take();
    // Text held back for a possible stop string arrives later; nothing to send yet.
    if (chunk.text().empty() && lp.is_null()) return true;
    return write(SseEvent(DeltaChunkJson(call.ctx, chunk.text(), std::move(lp))));
  }
  if (got && msg.has_complete()) {
    const v1::GenerateComplete& complete = msg.complete();
    if (!write(SseEvent(FinishChunkJson(call.ctx, complete)))) return false;
    if (call.include_usage && !write(SseEvent(UsageChunkJson(call.ctx, complete)))) return false;
    spdlog::info("{}: stream finished ({}) prompt_tokens={} completion_tokens={} policy={} e2e={:.3f}s",
                 call.ctx.id, FinishReasonName(complete.finish_reason()), complete.usage().prompt_tokens(),
                 complete.usage().completion_tokens(), complete.pruning().policy(), SecondsSince(call.start));
    return true;
  }
  if (got) return true;  // an empty message: nothing to forward
  const grpc::Status status = call.reader->Finish();
  call.finished = true;
  // The headers are gone: a failure after the first event is reported in the stream.
  if (!status.ok()) {
    spdlog::warn("{}: stream failed: {} ({})", call.ctx.id, status.error_message(),
                 static_cast<int>(status.error_code()));
    if (!write(SseEvent(ToJson(FromGrpcStatus(status))))) return false;
  }
  if (!write("data: [DONE]\n\n")) return false;
  sink.done();
  return true;
}

void ServeStream(Backend& backend, const CompletionHandlerOptions& options, ParsedRequest parsed,
                 ResponseContext ctx, httplib::Response& res) {
  auto call = std::make_shared<StreamCall>(std::move(ctx));
  call->include_usage = parsed.include_usage;
  SetDeadline(&call->grpc_ctx, options.request_timeout_seconds);
  call->reader = backend.generation().Generate(&call->grpc_ctx, parsed.grpc);
  // Wait for the first message: a request the server rejects gets a proper HTTP status instead of
  // a 200 with an error event.
  v1::GenerateResponse first;
  if (!call->reader->Read(&first)) {
    const grpc::Status status = call->reader->Finish();
    call->finished = true;
    if (!status.ok()) {
      spdlog::info("{}: rejected by the backend: {}", call->ctx.id, status.error_message());
      SendError(res, FromGrpcStatus(status));
    } else {
      ApiError e;
      e.message = "the backend ended the stream without a completion (request " + call->ctx.id + ")";
      SendError(res, e);
    }
    return;
  }
  call->pending = std::move(first);
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // proxies must not buffer the stream
  res.set_chunked_content_provider(
      "text/event-stream", [call](size_t, httplib::DataSink& sink) { return NextEvents(*call, sink); },
      [call](bool success) {
        if (!success) call->Cancel();
      });
}

void ServeUnary(Backend& backend, const CompletionHandlerOptions& options, const ParsedRequest& parsed,
                const ResponseContext& ctx, const httplib::Request& req, httplib::Response& res) {
  const Clock::time_point start = Clock::now();
  grpc::ClientContext grpc_ctx;
  SetDeadline(&grpc_ctx, options.request_timeout_seconds);
  // Nothing is written until the end, so only the socket can tell that the client left: then the
  // backend call is cancelled and the request stops generating (issue 18 D2).
  ConnectionWatch watch(req, [&grpc_ctx] { grpc_ctx.TryCancel(); });
  auto reader = backend.generation().Generate(&grpc_ctx, parsed.grpc);
  std::string text;
  LogprobsBuilder logprobs(ctx);
  std::optional<v1::GenerateComplete> complete;
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) {
      logprobs.Append(msg.chunk(), text.size());
      text += msg.chunk().text();
    } else if (msg.has_complete()) {
      complete = msg.complete();
    }
  }
  const grpc::Status status = reader->Finish();
  if (watch.gone()) {
    spdlog::info("{}: the client closed the connection; request cancelled", ctx.id);
    return;
  }
  if (!status.ok()) {
    spdlog::info("{}: failed: {}", ctx.id, status.error_message());
    SendError(res, FromGrpcStatus(status));
    return;
  }
  if (!complete) {
    ApiError e;
    e.message = "the backend ended the stream without a completion (request " + ctx.id + ")";
    SendError(res, e);
    return;
  }
  spdlog::info("{}: finished ({}) prompt_tokens={} completion_tokens={} policy={} e2e={:.3f}s", ctx.id,
               FinishReasonName(complete->finish_reason()), complete->usage().prompt_tokens(),
               complete->usage().completion_tokens(), complete->pruning().policy(), SecondsSince(start));
  SendJson(res, 200, CompletionJson(ctx, text, logprobs.Take(), *complete));
}

}  // namespace

void HandleCompletion(Endpoint endpoint, Backend& backend, const CompletionHandlerOptions& options,
                      const httplib::Request& req, httplib::Response& res) {
  ParsedRequest parsed;
  ApiError error;
  if (!ParseRequest(endpoint, req.body, &parsed, &error)) {
    SendError(res, error);
    return;
  }
  // With --model-name the name is enforced (404 otherwise); without it this single-model server
  // answers whatever model the client names, as llama.cpp's server does, and echoes that name.
  if (!options.model_name.empty() && parsed.model != options.model_name) {
    const std::string& served = options.model_name;
    ApiError e;
    e.http_status = 404;
    e.type = "invalid_request_error";
    e.param = "model";
    e.code = "model_not_found";
    e.message = "model: '" + parsed.model + "' does not exist; this server serves '" + served + "'";
    SendError(res, e);
    return;
  }
  ResponseContext ctx;
  ctx.endpoint = endpoint;
  ctx.id = NewRequestId(endpoint);
  ctx.created = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::system_clock::now().time_since_epoch()).count();
  ctx.model = parsed.model;
  ctx.logprobs = parsed.logprobs;
  ctx.top_logprobs = parsed.top_logprobs;
  parsed.grpc.set_request_id(ctx.id);
  if (parsed.stream) {
    ServeStream(backend, options, std::move(parsed), std::move(ctx), res);
  } else {
    ServeUnary(backend, options, parsed, ctx, req, res);
  }
}

}  // namespace asl::gateway
