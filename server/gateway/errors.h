// OpenAI-style errors of the gateway and the mapping from asl-server's gRPC statuses
// (proto/asl/v1/generation.proto, "Errors"): INVALID_ARGUMENT 400, OUT_OF_RANGE 400
// context_length_exceeded, RESOURCE_EXHAUSTED 429 (with Retry-After: 1), UNAVAILABLE 503, DEADLINE_EXCEEDED 504,
// everything else 500.
#pragma once

#include <grpcpp/support/status.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace asl::gateway {

// One error as OpenAI returns it: {"error": {"message", "type", "param", "code"}} with an HTTP
// status. `param` is the OpenAI request field at fault (empty: null).
struct ApiError {
  int http_status = 500;
  std::string message;
  std::string type = "server_error";
  std::string param;
  std::string code;
  // > 0: sent as a Retry-After header (seconds), which OpenAI's clients wait before retrying.
  int retry_after_seconds = 0;
};

// A 400 naming the request field `param` (OpenAI's name, e.g. "temperature", "messages[1].content").
[[nodiscard]] ApiError InvalidRequest(std::string param, std::string message);

// Maps a failed backend call to an ApiError. asl-server names the offending field with its proto
// path ("sampling.temperature: must be ..."); that path is rewritten to the OpenAI field name, which
// becomes both `param` and the message's prefix.
[[nodiscard]] ApiError FromGrpcStatus(const grpc::Status& status);

// The OpenAI field name for a proto field path of GenerateRequest ("sampling.top_p" -> "top_p",
// "chat.messages[0].content" -> "messages[0].content", "token_ids[3]" -> "prompt[3]").
[[nodiscard]] std::string OpenAiParamFor(const std::string& proto_path);

[[nodiscard]] nlohmann::json ToJson(const ApiError& error);

// The HTTP headers an error response carries besides its JSON body (name, value).
[[nodiscard]] std::vector<std::pair<std::string, std::string>> ErrorHeaders(const ApiError& error);

}  // namespace asl::gateway
