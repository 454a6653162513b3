// The gateway's gRPC connection to asl-server: one channel shared by all HTTP worker threads
// (gRPC stubs and channels are thread-safe).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "asl/v1/generation.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "security/grpc_security.h"

namespace asl::gateway {

class Backend {
 public:
  // `address` is host:port of asl-server; `max_message_bytes` bounds messages both ways;
  // `security`: the key sent on every call and TLS. nullptr with *error naming the file when a
  // TLS file cannot be read.
  static std::unique_ptr<Backend> Create(const std::string& address, int max_message_bytes,
                                         const security::ClientSecurity& security, std::string* error);
  Backend(const std::string& address, std::shared_ptr<grpc::Channel> channel);

  v1::Generation::Stub& generation() { return *generation_; }
  const std::string& address() const { return address_; }

  // grpc.health.v1.Health/Check of the whole server. Thread-safe.
  [[nodiscard]] grpc::Status CheckHealth(bool* serving, double timeout_seconds);
  // Generation/GetModelInfo. Thread-safe.
  [[nodiscard]] grpc::Status GetModelInfo(v1::ModelInfo* info, double timeout_seconds);
  // Generation/Tokenize and Generation/Detokenize; `request_id` goes in the call's x-request-id
  // metadata. Thread-safe.
  [[nodiscard]] grpc::Status Tokenize(const v1::TokenizeRequest& request, v1::TokenizeResponse* response,
                                      const std::string& request_id, double timeout_seconds);
  [[nodiscard]] grpc::Status Detokenize(const v1::DetokenizeRequest& request, v1::DetokenizeResponse* response,
                                        const std::string& request_id, double timeout_seconds);
  // Generation/ResetPrefixCache. Thread-safe.
  [[nodiscard]] grpc::Status ResetPrefixCache(const std::string& request_id, double timeout_seconds);

 private:
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> generation_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

}  // namespace asl::gateway
