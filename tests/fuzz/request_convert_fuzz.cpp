// libFuzzer target: the gRPC request conversion and validation (server/request_convert.*): the
// serialized GenerateRequest as the service receives it (ParseMessage, with its invalid-UTF-8
// field search), then ToEngineRequest (input tokenization, chat template, sampling and pruning
// validation) against a toy byte-level tokenizer with a ChatML template.
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/support/byte_buffer.h>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/bpe.h"
#include "server/request_convert.h"

namespace {

const asl::tok::Tokenizer& Toy() {
  static const std::unique_ptr<asl::tok::Tokenizer> tok = [] {
    asl::tok::TokenizerSpec spec;
    spec.pre = "gpt2";
    for (int b = 0; b < 256; ++b) spec.tokens.push_back(asl::tok::ByteToUnicode()[b]);
    for (const char* m : {"h e", "l l", "he ll"}) {
      std::string s(m);
      spec.tokens.push_back(s.substr(0, s.find(' ')) + s.substr(s.find(' ') + 1));
      spec.merges.push_back(s);
    }
    spec.tokens.push_back("<|im_start|>");
    spec.tokens.push_back("<|im_end|>");
    spec.token_types.assign(spec.tokens.size(), asl::tok::TokenType::kNormal);
    spec.token_types[spec.tokens.size() - 1] = spec.token_types[spec.tokens.size() - 2] =
        asl::tok::TokenType::kControl;
    spec.bos_id = static_cast<int32_t>(spec.tokens.size() - 2);
    spec.eos_id = static_cast<int32_t>(spec.tokens.size() - 1);
    spec.chat_template =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n'}}{% endfor %}";
    auto t = asl::tok::Tokenizer::Create(std::move(spec));
    if (!t.ok()) __builtin_trap();
    return std::move(t).value();
  }();
  return *tok;
}

}  // namespace

// protobuf logs every string field that is not valid UTF-8; ParseMessage reports those itself.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  grpc::Slice slice(data, size);
  grpc::ByteBuffer buffer(&slice, 1);
  asl::v1::GenerateRequest request;
  grpc::Status parsed = asl::server::ParseMessage(buffer, &request);
  if (!parsed.ok()) {
    if (parsed.error_message().empty()) __builtin_trap();
    return 0;
  }
  const asl::tok::Tokenizer& tok = Toy();
  asl::server::RequestLimits limits;
  limits.vocab_size = tok.vocab_size();
  limits.num_layers = 4;
  limits.max_prompt_tokens = 64;
  auto engine_request = asl::server::ToEngineRequest(request, "fuzz", tok, limits);
  if (engine_request.ok()) {
    if (static_cast<int64_t>(engine_request->prompt_ids.size()) > 64) __builtin_trap();
    for (auto id : engine_request->prompt_ids) {
      if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
    }
  }
  return 0;
}
