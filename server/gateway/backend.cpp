#include "server/gateway/backend.h"

#include <chrono>

namespace asl::gateway {
namespace {

void SetTimeout(grpc::ClientContext* ctx, double seconds) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6)));
}

}  // namespace

std::unique_ptr<Backend> Backend::Create(const std::string& address, int max_message_bytes,
                                         const security::ClientSecurity& security, std::string* error) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_message_bytes);
  args.SetMaxSendMessageSize(max_message_bytes);
  // Reconnect quickly after a backend restart: the default backoff grows to two minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  std::shared_ptr<grpc::Channel> channel = security::MakeClientChannel(address, security, args, error);
  if (channel == nullptr) return nullptr;
  return std::make_unique<Backend>(address, std::move(channel));
}

Backend::Backend(const std::string& address, std::shared_ptr<grpc::Channel> channel)
    : address_(address), channel_(std::move(channel)) {
  generation_ = v1::Generation::NewStub(channel_);
  health_ = grpc::health::v1::Health::NewStub(channel_);
}

grpc::Status Backend::CheckHealth(bool* serving, double timeout_seconds) {
  grpc::ClientContext ctx;
  SetTimeout(&ctx, timeout_seconds);
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status st = health_->Check(&ctx, req, &resp);
  *serving = st.ok() && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  return st;
}

grpc::Status Backend::GetModelInfo(v1::ModelInfo* info, double timeout_seconds) {
  grpc::ClientContext ctx;
  SetTimeout(&ctx, timeout_seconds);
  return generation_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), info);
}

grpc::Status Backend::Tokenize(const v1::TokenizeRequest& request, v1::TokenizeResponse* response,
                              const std::string& request_id, double timeout_seconds) {
  grpc::ClientContext ctx;
  SetTimeout(&ctx, timeout_seconds);
  ctx.AddMetadata("x-request-id", request_id);
  return generation_->Tokenize(&ctx, request, response);
}

grpc::Status Backend::Detokenize(const v1::DetokenizeRequest& request, v1::DetokenizeResponse* response,
                                const std::string& request_id, double timeout_seconds) {
  grpc::ClientContext ctx;
  SetTimeout(&ctx, timeout_seconds);
  ctx.AddMetadata("x-request-id", request_id);
  return generation_->Detokenize(&ctx, request, response);
}

grpc::Status Backend::ResetPrefixCache(const std::string& request_id, double timeout_seconds) {
  grpc::ClientContext ctx;
  SetTimeout(&ctx, timeout_seconds);
  ctx.AddMetadata("x-request-id", request_id);
  v1::ResetPrefixCacheRequest request;
  v1::ResetPrefixCacheResponse response;
  return generation_->ResetPrefixCache(&ctx, request, &response);
}

}  // namespace asl::gateway
