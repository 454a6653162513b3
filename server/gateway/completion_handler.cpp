#include "server/gateway/completion_handler.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <memory>
#include <optional>
#include <vector>

#include "server/gateway/backend.h"
#include "server/gateway/connection_watch.h"
#include "server/gateway/errors.h"
#include "server/gateway/openai_request.h"
#include "server/gateway/openai_response.h"
#include "server/gateway/request_id.h"

namespace asl::gateway {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

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

// One Generate call of a request (prompt p's k-th sample) and what came back from it.
struct Call {
  explicit Call(const ResponseContext& ctx) : logprobs(ctx) {}
  ~Call() { Cancel(); }

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

  GenerationCall spec;
  int index = 0;  // the choice index it answers
  grpc::ClientContext grpc_ctx;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
  std::optional<v1::GenerateResponse> pending;  // read before the headers were sent
  bool finished = false;                        // reader->Finish() was called
  LogprobsBuilder logprobs;
  std::string text;
  double sum_logprob = 0;  // of the sampled tokens (best_of ranks by it)
  int64_t num_tokens = 0;
  std::optional<v1::GenerateComplete> complete;
  std::optional<ToolCallParser> tools;  // chat with tools: the reply is parsed for tool calls
};

// A Generate call's failure as the client's error: the server's "sampling.constraint" is the
// request field the constraint came from.
ApiError GenerateError(const ResponseContext& ctx, const grpc::Status& status) {
  ApiError e = FromGrpcStatus(status);
  if (e.param == "constraint" && !ctx.constraint_param.empty()) {
    e.param = ctx.constraint_param;
    e.message = e.param + e.message.substr(std::string_view("constraint").size());
  }
  return e;
}

// The request's calls, started (each one's request reaches the server now; the server runs them
// side by side and computes an identical prompt once).
std::vector<std::unique_ptr<Call>> StartCalls(Backend& backend, const CompletionHandlerOptions& options,
                                              const ParsedRequest& parsed, const ResponseContext& ctx,
                                              ToolCallFormat tool_format) {
  std::vector<GenerationCall> specs = CallsFor(parsed);
  std::vector<std::unique_ptr<Call>> calls;
  for (size_t i = 0; i < specs.size(); ++i) {
    auto c = std::make_unique<Call>(ctx);
    c->spec = std::move(specs[i]);
    c->index = c->spec.prompt_index * parsed.n + c->spec.sample_index;
    if (tool_format != ToolCallFormat::kNone) {
      // call_<the response id's letters and digits>_<generation>_<call>: unique per response.
      std::string id = "call_";
      for (char ch : ctx.id.substr(ctx.id.find('-') + 1)) {
        if (std::isalnum(static_cast<unsigned char>(ch))) id += ch;
      }
      c->tools.emplace(tool_format, id + "_" + std::to_string(i) + "_", parsed.forced_function);
    }
    // One x-request-id per request; its calls are told apart in the server's log by "/<i>".
    c->spec.grpc.set_request_id(specs.size() == 1 ? ctx.request_id : ctx.request_id + "/" + std::to_string(i));
    SetDeadline(&c->grpc_ctx, options.request_timeout_seconds);
    c->reader = backend.generation().Generate(&c->grpc_ctx, c->spec.grpc);
    calls.push_back(std::move(c));
  }
  return calls;
}

// A chunk's tokens into the call's text, logprobs and logprob sum.
void Absorb(Call& c, const v1::GenerateChunk& chunk) {
  c.num_tokens += chunk.token_ids_size();
  c.logprobs.Append(chunk);
  c.text += chunk.text();
  for (const v1::TokenLogprob& lp : chunk.logprobs()) c.sum_logprob += lp.logprob();
}

// The text echo prepends to prompt p's choices: the prompt as given, or its token ids decoded.
bool EchoTexts(Backend& backend, const ParsedRequest& parsed, const std::string& request_id,
               std::vector<std::string>* out, ApiError* error) {
  for (const v1::GenerateRequest& p : parsed.prompts) {
    if (p.input_case() == v1::GenerateRequest::kPrompt) {
      out->push_back(p.prompt());
      continue;
    }
    v1::DetokenizeRequest req;
    *req.mutable_token_ids() = p.token_ids().ids();
    v1::DetokenizeResponse resp;
    const grpc::Status st = backend.Detokenize(req, &resp, request_id, 30.0);
    if (!st.ok()) {
      *error = FromGrpcStatus(st);
      return false;
    }
    out->push_back(resp.text());
  }
  return true;
}

std::vector<const v1::GenerateComplete*> Completes(const std::vector<std::unique_ptr<Call>>& calls) {
  std::vector<const v1::GenerateComplete*> out;
  for (const auto& c : calls) out.push_back(&*c->complete);
  return out;
}

std::vector<int> PromptOf(const std::vector<std::unique_ptr<Call>>& calls) {
  std::vector<int> out;
  for (const auto& c : calls) out.push_back(c->spec.prompt_index);
  return out;
}

// One of the gateway's generation seats, held until the response is done (a stream: until its
// last event, by the StreamState that owns it).
class Seat {
 public:
  explicit Seat(std::shared_ptr<std::atomic<int>> count) : count_(std::move(count)) {}
  ~Seat() {
    if (count_) --*count_;
  }
  Seat(const Seat&) = delete;
  Seat& operator=(const Seat&) = delete;

 private:
  std::shared_ptr<std::atomic<int>> count_;
};

// A seat, or nullptr when all are taken.
std::unique_ptr<Seat> TakeSeat(const CompletionHandlerOptions& options) {
  if (!options.in_flight) return std::make_unique<Seat>(nullptr);
  if (options.in_flight->fetch_add(1) >= options.max_in_flight) {
    --*options.in_flight;
    return nullptr;
  }
  return std::make_unique<Seat>(options.in_flight);
}

// A streamed response: its calls are sent one after the other, each choice whole (clients put
// choices together by index), all started at once so that they generate side by side.
struct StreamState {
  explicit StreamState(ResponseContext c) : ctx(std::move(c)) {}
  void CancelAll() {
    for (auto& c : calls) c->Cancel();
  }
  ResponseContext ctx;
  bool include_usage = false;
  std::vector<std::unique_ptr<Call>> calls;
  std::vector<std::string> echo;  // per prompt; empty without echo
  std::unique_ptr<Seat> seat;     // released with the state, after the last event
  size_t current = 0;             // the call being sent
  bool started_current = false;   // its role chunk (chat) or echo text was sent
  Clock::time_point start = Clock::now();
};

// The tool calls a piece of the reply completed, as one delta chunk.
template <typename Write>
bool WriteToolCalls(const StreamState& st, const Call& call, const std::vector<ParsedToolCall>& calls, Write& write) {
  if (calls.empty()) return true;
  const int first = call.tools->num_calls() - static_cast<int>(calls.size());
  return write(SseEvent(ToolCallsChunkJson(st.ctx, calls, first, call.index)));
}

// Produces the next SSE event(s). Returns false when the client is gone (the calls are cancelled).
bool NextEvents(StreamState& st, httplib::DataSink& sink) {
  auto write = [&](const std::string& s) {
    if (sink.write(s.data(), s.size())) return true;
    spdlog::info("{} ({}): client disconnected; cancelling the backend calls", st.ctx.id, st.ctx.request_id);
    st.CancelAll();
    return false;
  };
  if (st.current == st.calls.size()) {  // every choice sent
    if (st.include_usage && !write(SseEvent(UsageChunkJson(st.ctx, UsageJson(Completes(st.calls), PromptOf(st.calls)))))) {
      return false;
    }
    spdlog::info("{} ({}): stream finished, {} choice(s), e2e={:.3f}s", st.ctx.id, st.ctx.request_id, st.calls.size(),
                 SecondsSince(st.start));
    if (!write("data: [DONE]\n\n")) return false;
    sink.done();
    return true;
  }
  Call& call = *st.calls[st.current];
  if (!st.started_current) {
    st.started_current = true;
    if (st.ctx.endpoint == Endpoint::kChatCompletions && !write(SseEvent(RoleChunkJson(st.ctx, call.index)))) {
      return false;
    }
    if (!st.echo.empty() &&
        !write(SseEvent(DeltaChunkJson(st.ctx, st.echo[call.spec.prompt_index], nullptr, call.index)))) {
      return false;
    }
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
    Absorb(call, chunk);
    json lp = call.logprobs.Take();
    ToolCallParser::Output out{chunk.text(), {}};
    if (call.tools) out = call.tools->Feed(chunk.text());
    // Text held back for a possible stop string (or a tool call) arrives later; nothing to send yet.
    if ((!out.content.empty() || !lp.is_null()) &&
        !write(SseEvent(DeltaChunkJson(st.ctx, out.content, std::move(lp), call.index)))) {
      return false;
    }
    return WriteToolCalls(st, call, out.calls, write);
  }
  if (got && msg.has_complete()) {
    call.complete = msg.complete();
    const v1::GenerateComplete& complete = *call.complete;
    if (call.tools) {
      ToolCallParser::Output out = call.tools->Finish();
      if (!out.content.empty() && !write(SseEvent(DeltaChunkJson(st.ctx, out.content, nullptr, call.index)))) {
        return false;
      }
      if (!WriteToolCalls(st, call, out.calls, write)) return false;
    }
    const bool called = call.tools && call.tools->num_calls() > 0;
    if (!write(SseEvent(FinishChunkJson(st.ctx, complete, call.index, called)))) return false;
    spdlog::info("{} ({}): choice {} finished ({}) prompt_tokens={} completion_tokens={} policy={}", st.ctx.id,
                 st.ctx.request_id, call.index, FinishReasonName(complete.finish_reason()),
                 complete.usage().prompt_tokens(), complete.usage().completion_tokens(), complete.pruning().policy());
    return true;
  }
  if (got) return true;  // an empty message: nothing to forward
  const grpc::Status status = call.reader->Finish();
  call.finished = true;
  // The headers are gone: a failure after the first event is reported in the stream.
  if (!status.ok() || !call.complete) {
    spdlog::warn("{} ({}): stream failed: {} ({})", st.ctx.id, st.ctx.request_id, status.error_message(),
                 static_cast<int>(status.error_code()));
    ApiError e = GenerateError(st.ctx, status);
    if (status.ok()) e.message = "the backend ended the stream without a completion";
    st.CancelAll();
    if (!write(SseEvent(ToJson(e)))) return false;
    if (!write("data: [DONE]\n\n")) return false;
    sink.done();
    return true;
  }
  ++st.current;
  st.started_current = false;
  return true;
}

// The first failure of `calls` before their first message, after cancelling the rest; or none.
std::optional<ApiError> FirstMessages(std::vector<std::unique_ptr<Call>>& calls, const ResponseContext& ctx) {
  for (auto& c : calls) {
    v1::GenerateResponse first;
    if (c->reader->Read(&first)) {
      c->pending = std::move(first);
      continue;
    }
    const grpc::Status status = c->reader->Finish();
    c->finished = true;
    for (auto& other : calls) other->Cancel();
    if (!status.ok()) {
      spdlog::info("{} ({}): rejected by the backend: {}", ctx.id, ctx.request_id, status.error_message());
      return GenerateError(ctx, status);
    }
    ApiError e;
    e.message = "the backend ended the stream without a completion (request " + ctx.request_id + ")";
    return e;
  }
  return std::nullopt;
}

void ServeStream(Backend& backend, const CompletionHandlerOptions& options, const ParsedRequest& parsed,
                 ResponseContext ctx, ToolCallFormat tool_format, std::unique_ptr<Seat> seat,
                 httplib::Response& res) {
  auto st = std::make_shared<StreamState>(std::move(ctx));
  st->seat = std::move(seat);
  st->include_usage = parsed.include_usage;
  ApiError error;
  if (parsed.echo && !EchoTexts(backend, parsed, st->ctx.request_id, &st->echo, &error)) {
    SendError(res, error);
    return;
  }
  st->calls = StartCalls(backend, options, parsed, st->ctx, tool_format);
  // Wait for each call's first message: a request the server rejects gets a proper HTTP status
  // instead of a 200 with an error event.
  if (std::optional<ApiError> e = FirstMessages(st->calls, st->ctx)) {
    SendError(res, *e);
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // proxies must not buffer the stream
  res.set_chunked_content_provider(
      "text/event-stream", [st](size_t, httplib::DataSink& sink) { return NextEvents(*st, sink); },
      [st](bool success) {
        if (!success) st->CancelAll();
      });
}

void ServeUnary(Backend& backend, const CompletionHandlerOptions& options, const ParsedRequest& parsed,
                const ResponseContext& ctx, ToolCallFormat tool_format, const httplib::Request& req,
                httplib::Response& res) {
  const Clock::time_point start = Clock::now();
  std::vector<std::string> echo;
  ApiError error;
  if (parsed.echo && !EchoTexts(backend, parsed, ctx.request_id, &echo, &error)) {
    SendError(res, error);
    return;
  }
  std::vector<std::unique_ptr<Call>> calls = StartCalls(backend, options, parsed, ctx, tool_format);
  // Nothing is written until the end, so only the socket can tell that the client left: then the
  // backend calls are cancelled and the requests stop generating (issue 18 D2).
  ConnectionWatch watch(req, [&calls] {
    for (auto& c : calls) c->grpc_ctx.TryCancel();
  });
  std::optional<grpc::Status> failed;
  for (auto& c : calls) {
    v1::GenerateResponse msg;
    while (c->reader->Read(&msg)) {
      if (msg.has_chunk()) {
        Absorb(*c, msg.chunk());
      } else if (msg.has_complete()) {
        c->complete = msg.complete();
      }
    }
    const grpc::Status status = c->reader->Finish();
    c->finished = true;
    if (!status.ok() || !c->complete) {
      failed = status;
      for (auto& other : calls) other->Cancel();
      break;
    }
  }
  if (watch.gone()) {
    spdlog::info("{} ({}): the client closed the connection; request cancelled", ctx.id, ctx.request_id);
    return;
  }
  if (failed) {
    if (!failed->ok()) {
      spdlog::info("{} ({}): failed: {}", ctx.id, ctx.request_id, failed->error_message());
      SendError(res, GenerateError(ctx, *failed));
    } else {
      ApiError e;
      e.message = "the backend ended the stream without a completion (request " + ctx.request_id + ")";
      SendError(res, e);
    }
    return;
  }
  // best_of: of each prompt's candidates, the n with the highest summed logprob, best first (ties:
  // the earlier sample).
  std::vector<Call*> returned;
  for (size_t first = 0; first < calls.size(); first += static_cast<size_t>(parsed.best_of)) {
    std::vector<Call*> group;
    for (int k = 0; k < parsed.best_of; ++k) group.push_back(calls[first + static_cast<size_t>(k)].get());
    if (parsed.best_of > parsed.n) {
      std::stable_sort(group.begin(), group.end(), [](const Call* a, const Call* b) { return a->sum_logprob > b->sum_logprob; });
    }
    for (int k = 0; k < parsed.n; ++k) {
      group[static_cast<size_t>(k)]->index = group[static_cast<size_t>(k)]->spec.prompt_index * parsed.n + k;
      returned.push_back(group[static_cast<size_t>(k)]);
    }
  }
  std::vector<ChoiceOut> choices;
  for (Call* c : returned) {
    std::string text = echo.empty() ? c->text : echo[static_cast<size_t>(c->spec.prompt_index)] + c->text;
    ChoiceOut out{c->index, std::move(text), c->logprobs.Take(), &*c->complete, {}};
    if (c->tools) {
      ToolCallParser::Output body = c->tools->Feed(out.text), tail = c->tools->Finish();
      out.text = body.content + tail.content;
      out.tool_calls = std::move(body.calls);
      for (ParsedToolCall& t : tail.calls) out.tool_calls.push_back(std::move(t));
    }
    choices.push_back(std::move(out));
  }
  spdlog::info("{} ({}): finished, {} choice(s) of {} generation(s), first ({}) prompt_tokens={} "
               "completion_tokens={} policy={} e2e={:.3f}s",
               ctx.id, ctx.request_id, choices.size(), calls.size(),
               FinishReasonName(choices[0].complete->finish_reason()), choices[0].complete->usage().prompt_tokens(),
               choices[0].complete->usage().completion_tokens(), choices[0].complete->pruning().policy(),
               SecondsSince(start));
  SendJson(res, 200, CompletionJson(ctx, choices, UsageJson(Completes(calls), PromptOf(calls))));
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
  ctx.id = (endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-") + NewRequestId();
  // Set by the gateway's pre-routing handler (the client's, sanitised, or a new one).
  ctx.request_id = res.get_header_value("x-request-id");
  if (ctx.request_id.empty()) ctx.request_id = NewRequestId();
  ctx.created = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::system_clock::now().time_since_epoch()).count();
  ctx.model = parsed.model;
  ctx.logprobs = parsed.logprobs;
  ctx.top_logprobs = parsed.top_logprobs;
  spdlog::info("{}: x-request-id {}, {}", ctx.id, ctx.request_id,
               endpoint == Endpoint::kChatCompletions ? "chat completion" : "completion");
  ctx.constraint_param = parsed.constraint_param;
  ToolCallFormat tool_format = parsed.forced_tool;  // tool_choice "required" or a named function
  if (parsed.parse_tool_calls && tool_format == ToolCallFormat::kNone) {
    if (std::optional<ToolCallFormat> f = ParseToolCallFormat(options.tool_call_parser)) {
      tool_format = *f;
    } else {  // auto: the format the model's chat template teaches
      v1::ModelInfo info;
      const grpc::Status st = backend.GetModelInfo(&info, 5.0);
      if (!st.ok()) {
        SendError(res, FromGrpcStatus(st));
        return;
      }
      tool_format = DetectToolCallFormat(info.chat_template());
    }
  }
  std::unique_ptr<Seat> seat = TakeSeat(options);
  if (!seat) {
    ApiError e;
    e.http_status = 429;
    e.type = "rate_limit_error";
    e.code = "gateway_at_capacity";
    e.message = "the gateway is serving its most concurrent generations (" + std::to_string(options.max_in_flight) +
                ", asl-gateway --threads); retry shortly";
    e.retry_after_seconds = 1;
    spdlog::info("{} ({}): refused, {} generations in flight", ctx.id, ctx.request_id, options.max_in_flight);
    SendError(res, e);
    return;
  }
  if (parsed.stream) {
    ServeStream(backend, options, parsed, std::move(ctx), tool_format, std::move(seat), res);
  } else {
    ServeUnary(backend, options, parsed, ctx, tool_format, req, res);
  }
}

}  // namespace asl::gateway
