// Proto <-> engine types, and request validation (docs/architecture.md: "parse everything into
// native C++ types as early as possible"). Every error names the request field by its path in
// proto/asl/v1/generation.proto ("sampling.top_p", "chat.messages[2].role", "token_ids.ids[7]").
//
// Threads: pure functions; the tokenizer is immutable and safe to share.
#pragma once

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include <string>
#include <string_view>
#include <vector>

#include "asl/v1/generation.pb.h"
#include "engine/engine.h"
#include "engine/request.h"

namespace asl::tok {
class Tokenizer;
}

namespace asl::server {

// What validation needs to know about the model and the server.
struct RequestLimits {
  int64_t vocab_size = 0;
  int num_layers = 0;
  int64_t max_prompt_tokens = 0;   // longest prompt accepted (already resolved, > 0)
  PruningParams default_pruning;   // the server's defaults (config pruning.*)
};

// The limits for `engine`: max_prompt_tokens 0 means context_length - 1.
RequestLimits LimitsFor(const Engine& engine, int64_t max_prompt_tokens);

// Maps engine status codes to gRPC codes (docs/architecture.md "Errors").
grpc::Status ToGrpcStatus(const Status& status);
// The lower-case name of a gRPC code, as the asl_requests_total{status} label uses it.
std::string GrpcCodeLabel(grpc::StatusCode code);

// Parses a serialized message. When parsing fails, the status is INVALID_ARGUMENT and names the
// first string field that is not valid UTF-8 (protobuf refuses those), or says the message is
// malformed.
grpc::Status ParseMessage(const grpc::ByteBuffer& buffer, google::protobuf::Message* message);
// The path of the first string field in the serialized `bytes` of a `descriptor` message that is
// not valid UTF-8 ("chat.messages[1].content"), or "" if there is none.
std::string FindInvalidUtf8Field(std::string_view bytes, const google::protobuf::Descriptor* descriptor);

// Proto -> engine sampling parameters: unset fields keep SamplingParams' defaults. Not validated.
SamplingParams ToSamplingParams(const v1::SamplingParams& proto);
// Proto -> engine pruning parameters over `defaults`. Fails (naming the field) on an unknown
// policy or pooling; the numeric checks are ResolvePruningParams'.
StatusOr<PruningParams> ToPruningParams(const v1::PruningParams& proto, const PruningParams& defaults);

// Text -> ids (BOS when `add_bos` and the tokenizer asks for it; special-token text parsed).
// `field` names the text in errors ("prompt", "text").
StatusOr<std::vector<TokenId>> EncodeText(const std::string& text, const std::string& field, bool add_bos,
                                          const tok::Tokenizer& tokenizer);
// Chat -> the model's chat template -> ids. `field` names the messages ("chat"); `rendered`
// (optional) receives the rendered text.
StatusOr<std::vector<TokenId>> EncodeChat(const v1::ChatMessages& chat, const std::string& field,
                                          bool add_generation_prompt, const tok::Tokenizer& tokenizer,
                                          std::string* rendered);

// The prompt's token ids for any input form (prompt text, chat, token ids), checked against
// the vocabulary and max_prompt_tokens.
StatusOr<std::vector<TokenId>> TokenizeInput(const v1::GenerateRequest& request, const tok::Tokenizer& tokenizer,
                                             const RequestLimits& limits);

// The whole request, converted and validated: input, sampling (ValidateSamplingParams) and
// pruning (ResolvePruningParams). The engine's Submit checks the pool and context on top.
StatusOr<GenerateRequest> ToEngineRequest(const v1::GenerateRequest& request, const std::string& request_id,
                                          const tok::Tokenizer& tokenizer, const RequestLimits& limits);

// Engine output -> proto. `detailed` adds variance ratios and selected positions.
void AppendChunk(const TokenChunk& chunk, v1::GenerateChunk* out);
void FillComplete(const FinishEvent& event, bool detailed, v1::GenerateComplete* out);
void FillPruningParams(const PruningParams& params, v1::PruningParams* out);
void FillModelInfo(const Engine& engine, int64_t max_prompt_tokens, v1::ModelInfo* out);

// The name a model is served and labelled under (ModelInfo.served_name, the model_name label of
// /metrics): the last component of `model_path` without a .gguf/.safetensors/.bin extension,
// characters other than [A-Za-z0-9._-] replaced by '-'; "model" if nothing is left.
// "models/SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct.Q4_1".
std::string ServedModelName(const std::string& model_path);

}  // namespace asl::server
