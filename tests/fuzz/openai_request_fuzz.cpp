// libFuzzer target: the gateway's OpenAI request parser (server/gateway/openai_request.*): any
// body, for both endpoints. A crash or an escaping exception is a finding; a rejected body must
// come with an error message.
#include "server/gateway/openai_request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  for (auto endpoint : {asl::gateway::Endpoint::kChatCompletions, asl::gateway::Endpoint::kCompletions}) {
    asl::gateway::ParsedRequest parsed;
    asl::gateway::ApiError error;
    if (!asl::gateway::ParseRequest(endpoint, body, &parsed, &error)) {
      if (error.message.empty()) __builtin_trap();
    }
  }
  return 0;
}
