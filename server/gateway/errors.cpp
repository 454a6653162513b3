#include "server/gateway/errors.h"

#include <string_view>

namespace asl::gateway {
namespace {

bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// A field path is one token of [A-Za-z0-9_.[\]]: anything else (spaces) means the message does not
// start with a field name.
bool LooksLikeFieldPath(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                    c == '.' || c == '[' || c == ']';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

ApiError InvalidRequest(std::string param, std::string message) {
  ApiError e;
  e.http_status = 400;
  e.type = "invalid_request_error";
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = "invalid_value";
  return e;
}

std::string OpenAiParamFor(const std::string& proto_path) {
  std::string_view p = proto_path;
  if (StartsWith(p, "sampling.")) p.remove_prefix(9);
  if (p == "chat") return "messages";
  if (StartsWith(p, "chat.")) return std::string(p.substr(5));
  if (StartsWith(p, "token_ids")) return "prompt" + std::string(p.substr(9));
  if (p == "input" || p == "text") return "prompt";  // "text": TokenizeRequest's prompt
  if (p == "prompt_logprobs") return "echo";  // asked for by echo with logprobs
  if (StartsWith(p, "logit_bias[")) return "logit_bias";  // the server's message says which id
  return std::string(p);
}

ApiError FromGrpcStatus(const grpc::Status& status) {
  ApiError e;
  e.message = status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
      e.http_status = 400;
      e.type = "invalid_request_error";
      e.code = "invalid_value";
      break;
    case grpc::StatusCode::OUT_OF_RANGE:  // prompt (+ max_tokens) longer than the model takes
      e.http_status = 400;
      e.type = "invalid_request_error";
      e.code = "context_length_exceeded";
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      e.http_status = 429;
      e.type = "rate_limit_error";
      e.code = "resource_exhausted";
      // The waiting queue moves every engine step: a second is a fair wait before trying again.
      e.retry_after_seconds = 1;
      break;
    case grpc::StatusCode::UNAVAILABLE:
      e.http_status = 503;
      e.type = "service_unavailable";
      e.code = "unavailable";
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      e.http_status = 504;
      e.type = "timeout";
      e.code = "deadline_exceeded";
      break;
    case grpc::StatusCode::CANCELLED:
      e.http_status = 499;  // nginx's "client closed request": only seen when the client is gone
      e.type = "cancelled";
      e.code = "cancelled";
      break;
    default:
      e.http_status = 500;
      e.type = "server_error";
      e.code = "internal";
      break;
  }
  if (e.message.empty()) e.message = "backend call failed with gRPC code " + std::to_string(status.error_code());
  // "sampling.temperature: must be ..." -> param "temperature", message "temperature: must be ...".
  if (const size_t colon = e.message.find(": "); colon != std::string::npos) {
    const std::string path = e.message.substr(0, colon);
    if (LooksLikeFieldPath(path)) {
      e.param = OpenAiParamFor(path);
      e.message = e.param + e.message.substr(colon);
    }
  }
  return e;
}

std::vector<std::pair<std::string, std::string>> ErrorHeaders(const ApiError& error) {
  std::vector<std::pair<std::string, std::string>> headers;
  if (error.retry_after_seconds > 0) headers.emplace_back("Retry-After", std::to_string(error.retry_after_seconds));
  return headers;
}

nlohmann::json ToJson(const ApiError& error) {
  nlohmann::json inner = {{"message", error.message}, {"type", error.type}};
  inner["param"] = error.param.empty() ? nlohmann::json(nullptr) : nlohmann::json(error.param);
  inner["code"] = error.code.empty() ? nlohmann::json(nullptr) : nlohmann::json(error.code);
  return {{"error", inner}};
}

}  // namespace asl::gateway
