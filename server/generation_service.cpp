#include "server/generation_service.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <spdlog/spdlog.h>

#include "engine/tokenizer/tokenizer.h"
#include "security/grpc_security.h"
#include "server/generate_stream.h"
#include "server/metrics.h"

namespace asl::server {
namespace {

constexpr size_t kMaxRequestIdBytes = 256;

// The policy label of a request for metrics, before it is known to be valid.
std::string PolicyLabel(const v1::GenerateRequest& r, const RequestLimits& limits) {
  if (r.pruning().has_policy()) {
    return ParsePolicy(r.pruning().policy()) ? r.pruning().policy() : "invalid";
  }
  return PolicyName(limits.default_pruning.policy);
}

}  // namespace

GenerationService::GenerationService(int64_t max_prompt_tokens, std::shared_ptr<ServerMetrics> metrics,
                                     security::ApiKeySet api_keys)
    : max_prompt_tokens_(max_prompt_tokens), metrics_(std::move(metrics)), api_keys_(std::move(api_keys)) {}

void GenerationService::SetEngine(Engine* engine) {
  engine_ = engine;
  limits_ = LimitsFor(*engine, max_prompt_tokens_);
  state_.store(ServingState::kServing, std::memory_order_release);
}

void GenerationService::SetDraining() { state_.store(ServingState::kDraining, std::memory_order_release); }

Engine* GenerationService::ServingEngine(grpc::Status* why) const {
  switch (state()) {
    case ServingState::kServing: return engine_;
    case ServingState::kLoading:
      *why = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading; retry later");
      return nullptr;
    case ServingState::kDraining:
      *why = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
      return nullptr;
  }
  return nullptr;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Generate(grpc::CallbackServerContext* context,
                                                                        const grpc::ByteBuffer* request) {
  const grpc::Status auth = security::CheckCallAuth(api_keys_, *context);
  v1::GenerateRequest req;
  grpc::Status status = auth.ok() ? ParseMessage(*request, &req) : auth;
  std::string id = req.request_id();
  if (id.empty()) id = "req-" + std::to_string(next_request_number_.fetch_add(1));
  grpc::Status unavailable;
  Engine* engine = ServingEngine(&unavailable);
  auto stream = std::make_shared<GenerateStream>(engine, id, req.detailed_pruning_report());
  grpc::ServerWriteReactor<grpc::ByteBuffer>* reactor = stream->MakeReactor();

  auto reject = [&](const grpc::Status& st) {
    if (metrics_) metrics_->OnRejected(GrpcCodeLabel(st.error_code()), PolicyLabel(req, limits_));
    spdlog::debug("request {} rejected: {} {}", id, GrpcCodeLabel(st.error_code()), st.error_message());
    stream->Reject(st);
    return reactor;
  };
  if (!status.ok()) return reject(status);
  if (engine == nullptr) return reject(unavailable);
  if (req.request_id().size() > kMaxRequestIdBytes) {
    return reject(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               "request_id: at most " + std::to_string(kMaxRequestIdBytes) + " bytes"));
  }
  StatusOr<GenerateRequest> converted = ToEngineRequest(req, id, engine->tokenizer(), limits_);
  if (!converted.ok()) return reject(ToGrpcStatus(converted.status()));

  const size_t num_prompt_tokens = converted->prompt_ids.size();
  const PruningParams pruning = converted->pruning;
  StatusOr<RequestId> engine_id = engine->Submit(std::move(converted).value(), stream);
  if (!engine_id.ok()) return reject(ToGrpcStatus(engine_id.status()));
  spdlog::info("request {} start: engine id {}, {} prompt tokens, policy {}, select_k {}, kv_budget {}, max_tokens {}",
               id, *engine_id, num_prompt_tokens, PolicyName(pruning.policy), pruning.select_k, pruning.kv_budget,
               req.sampling().has_max_tokens() ? req.sampling().max_tokens() : SamplingParams().max_tokens);
  stream->Start(*engine_id);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  v1::TokenizeRequest req;
  grpc::Status status = security::CheckCallAuth(api_keys_, *context);
  if (status.ok()) status = ParseMessage(*request, &req);
  if (!status.ok()) {
    reactor->Finish(status);
    return reactor;
  }
  Engine* engine = ServingEngine(&status);
  if (engine == nullptr) {
    reactor->Finish(status);
    return reactor;
  }
  const tok::Tokenizer& tokenizer = engine->tokenizer();
  v1::TokenizeResponse out;
  StatusOr<std::vector<TokenId>> ids = InvalidArgument("input: one of text or chat is required");
  if (req.input_case() == v1::TokenizeRequest::kText) {
    ids = EncodeText(req.text(), "text", !req.has_add_bos() || req.add_bos(), tokenizer);
  } else if (req.input_case() == v1::TokenizeRequest::kChat) {
    const bool add_gen = !req.has_add_generation_prompt() || req.add_generation_prompt();
    ids = EncodeChat(req.chat(), "chat", add_gen, tokenizer, out.mutable_rendered_prompt());
  }
  if (!ids.ok()) {
    reactor->Finish(ToGrpcStatus(ids.status()));
    return reactor;
  }
  for (TokenId t : *ids) {
    out.add_token_ids(t);
    if (req.return_pieces()) out.add_pieces(tokenizer.Decode({t}, /*skip_special=*/false));
  }
  bool own = false;
  reactor->Finish(grpc::SerializationTraits<v1::TokenizeResponse>::Serialize(out, response, &own));
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::Detokenize(grpc::CallbackServerContext* context,
                                                        const v1::DetokenizeRequest* request,
                                                        v1::DetokenizeResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status status;
  Engine* engine = ServingEngine(&status);
  if (engine == nullptr) {
    reactor->Finish(status);
    return reactor;
  }
  const tok::Tokenizer& tokenizer = engine->tokenizer();
  std::vector<TokenId> ids(request->token_ids().begin(), request->token_ids().end());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= tokenizer.vocab_size()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   "token_ids[" + std::to_string(i) + "]: token id " + std::to_string(ids[i]) +
                                       " outside the vocabulary [0, " + std::to_string(tokenizer.vocab_size()) + ")"));
      return reactor;
    }
  }
  response->set_text(tokenizer.Decode(ids, request->skip_special_tokens()));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetModelInfoRequest* /*request*/,
                                                          v1::ModelInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status status = security::CheckCallAuth(api_keys_, *context);
  Engine* engine = status.ok() ? ServingEngine(&status) : nullptr;
  if (engine != nullptr) FillModelInfo(*engine, max_prompt_tokens_, response);
  reactor->Finish(status);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::ResetPrefixCache(grpc::CallbackServerContext* context,
                                                              const v1::ResetPrefixCacheRequest* /*request*/,
                                                              v1::ResetPrefixCacheResponse* /*response*/) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status status = security::CheckCallAuth(api_keys_, *context);
  Engine* engine = status.ok() ? ServingEngine(&status) : nullptr;
  if (engine != nullptr) engine->ResetPrefixCache();
  reactor->Finish(status);
  return reactor;
}

}  // namespace asl::server
