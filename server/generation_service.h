// GenerationService: asl.v1.Generation on gRPC's callback API. Generate and Tokenize take their
// request as raw bytes so that a string field holding invalid UTF-8 (which protobuf refuses to
// parse) is reported as INVALID_ARGUMENT naming the field rather than an opaque parse failure.
//
// Authentication: with API keys, every call must carry the metadata `authorization: Bearer KEY`,
// else UNAUTHENTICATED (checked before anything else, so a caller without a key learns nothing of
// the server's state). The standard health service is gRPC's own and stays open for probes.
//
// Lifecycle: kLoading (every call UNAVAILABLE) -> SetEngine -> kServing -> SetDraining ->
// kDraining (every new call UNAVAILABLE; running streams continue until the engine ends them).
//
// Threads: handlers run on gRPC's callback threads and never block; SetEngine / SetDraining on
// any thread. The engine must outlive the grpc::Server this service is registered with.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "asl/v1/generation.grpc.pb.h"
#include "engine/engine.h"
#include "security/api_keys.h"
#include "server/request_convert.h"

namespace asl::server {

class ServerMetrics;

enum class ServingState { kLoading, kServing, kDraining };

using GenerationServiceBase = v1::Generation::WithRawCallbackMethod_Generate<v1::Generation::WithRawCallbackMethod_Tokenize<
    v1::Generation::WithCallbackMethod_Detokenize<v1::Generation::WithCallbackMethod_GetModelInfo<
        v1::Generation::WithCallbackMethod_ResetPrefixCache<v1::Generation::Service>>>>>;

class GenerationService final : public GenerationServiceBase {
 public:
  // `max_prompt_tokens`: server.max_prompt_tokens (0 = the context length). `api_keys`: the keys
  // callers must send (none: no authentication).
  GenerationService(int64_t max_prompt_tokens, std::shared_ptr<ServerMetrics> metrics,
                    security::ApiKeySet api_keys = {});

  // The model is loaded: start serving with `engine` (not owned).
  void SetEngine(Engine* engine);
  // Shutdown began: refuse new calls with UNAVAILABLE.
  void SetDraining();
  ServingState state() const { return state_.load(std::memory_order_acquire); }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context, const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context, const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* ResetPrefixCache(grpc::CallbackServerContext* context,
                                             const v1::ResetPrefixCacheRequest* request,
                                             v1::ResetPrefixCacheResponse* response) override;

 private:
  // The engine when serving; otherwise nullptr and *why says UNAVAILABLE and why.
  Engine* ServingEngine(grpc::Status* why) const;

  const int64_t max_prompt_tokens_;
  std::shared_ptr<ServerMetrics> metrics_;
  const security::ApiKeySet api_keys_;
  std::atomic<ServingState> state_{ServingState::kLoading};
  Engine* engine_ = nullptr;      // written once by SetEngine, before state_ turns kServing
  RequestLimits limits_;          // likewise
  std::atomic<uint64_t> next_request_number_{1};
};

}  // namespace asl::server
