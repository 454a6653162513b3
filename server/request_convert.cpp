#include "server/request_convert.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/unknown_field_set.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <algorithm>
#include <map>
#include <type_traits>
#include <variant>

#include "engine/common/utf8.h"
#include "engine/tokenizer/tokenizer.h"
#include "proto/pruning_fields.h"

namespace asl::server {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::UnknownField;
using google::protobuf::UnknownFieldSet;

std::string Where(const std::string& field, const FieldDescriptor* fd, int index) {
  return fd->is_repeated() ? field + "[" + std::to_string(index) + "]" : field;
}

Status TooLong(const std::string& field, size_t n, int64_t limit) {
  return OutOfRange(field + ": " + std::to_string(n) + " tokens, more than the longest prompt accepted (" +
                         std::to_string(limit) + " tokens; server.max_prompt_tokens)");
}

v1::FinishReason ToProto(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled: return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kError: return v1::FINISH_REASON_ERROR;
    case FinishReason::kAbort: return v1::FINISH_REASON_ABORT;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

v1::SelectionOutcome ToProto(SelectionOutcome o) {
  switch (o) {
    case SelectionOutcome::kNone: return v1::SELECTION_OUTCOME_NONE;
    case SelectionOutcome::kSelected: return v1::SELECTION_OUTCOME_SELECTED;
    case SelectionOutcome::kForced: return v1::SELECTION_OUTCOME_FORCED;
    case SelectionOutcome::kNotApplicable: return v1::SELECTION_OUTCOME_NOT_APPLICABLE;
  }
  return v1::SELECTION_OUTCOME_NOT_APPLICABLE;
}

}  // namespace

RequestLimits LimitsFor(const Engine& engine, int64_t max_prompt_tokens) {
  const ModelInfo& info = engine.model_info();
  RequestLimits limits;
  limits.vocab_size = info.vocab_size;
  limits.num_layers = static_cast<int>(info.num_layers);
  const int64_t context_limit = std::max<int64_t>(1, info.context_length - 1);
  limits.max_prompt_tokens = max_prompt_tokens > 0 ? std::min(max_prompt_tokens, context_limit) : context_limit;
  limits.default_pruning = engine.config().default_pruning;
  return limits;
}

grpc::Status ToGrpcStatus(const Status& st) {
  using grpc::StatusCode;
  StatusCode code = StatusCode::INTERNAL;
  switch (st.code()) {
    case asl::StatusCode::kOk: return grpc::Status::OK;
    case asl::StatusCode::kInvalidArgument: code = StatusCode::INVALID_ARGUMENT; break;
    case asl::StatusCode::kNotFound: code = StatusCode::NOT_FOUND; break;
    case asl::StatusCode::kDataLoss: code = StatusCode::DATA_LOSS; break;
    case asl::StatusCode::kOutOfRange: code = StatusCode::OUT_OF_RANGE; break;
    case asl::StatusCode::kResourceExhausted: code = StatusCode::RESOURCE_EXHAUSTED; break;
    case asl::StatusCode::kUnavailable: code = StatusCode::UNAVAILABLE; break;
    case asl::StatusCode::kCancelled: code = StatusCode::CANCELLED; break;
    case asl::StatusCode::kDeadlineExceeded: code = StatusCode::DEADLINE_EXCEEDED; break;
    case asl::StatusCode::kUnimplemented: code = StatusCode::UNIMPLEMENTED; break;
    case asl::StatusCode::kInternal: code = StatusCode::INTERNAL; break;
  }
  return grpc::Status(code, st.message());
}

std::string GrpcCodeLabel(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "ok";
    case grpc::StatusCode::CANCELLED: return "cancelled";
    case grpc::StatusCode::INVALID_ARGUMENT: return "invalid_argument";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "deadline_exceeded";
    case grpc::StatusCode::NOT_FOUND: return "not_found";
    case grpc::StatusCode::OUT_OF_RANGE: return "out_of_range";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "resource_exhausted";
    case grpc::StatusCode::UNIMPLEMENTED: return "unimplemented";
    case grpc::StatusCode::UNAVAILABLE: return "unavailable";
    case grpc::StatusCode::UNAUTHENTICATED: return "unauthenticated";
    case grpc::StatusCode::DATA_LOSS: return "data_loss";
    default: return "internal";
  }
}


// Walks the wire format without the schema's UTF-8 check (UnknownFieldSet accepts any bytes),
// using the descriptor only to name fields and to descend into sub-messages.
std::string FindInvalidUtf8Field(std::string_view bytes, const Descriptor* d) {
  UnknownFieldSet set;
  if (!set.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return "";
  std::map<int, int> seen;  // field number -> occurrences so far (index into a repeated field)
  for (int i = 0; i < set.field_count(); ++i) {
    const UnknownField& f = set.field(i);
    const int index = seen[f.number()]++;
    if (f.type() != UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const FieldDescriptor* fd = d->FindFieldByNumber(f.number());
    if (fd == nullptr) continue;
    const std::string name = Where(fd->name(), fd, index);
    if (fd->type() == FieldDescriptor::TYPE_STRING && !asl::IsValidUtf8(f.length_delimited())) return name;
    if (fd->type() == FieldDescriptor::TYPE_MESSAGE) {
      const std::string inner = FindInvalidUtf8Field(f.length_delimited(), fd->message_type());
      if (!inner.empty()) return name + "." + inner;
    }
  }
  return "";
}

grpc::Status ParseMessage(const grpc::ByteBuffer& buffer, google::protobuf::Message* message) {
  grpc::ByteBuffer copy(buffer);  // ProtoBufferReader takes a mutable buffer
  {
    grpc::ProtoBufferReader reader(&copy);
    if (message->ParseFromZeroCopyStream(&reader)) return grpc::Status::OK;
  }
  grpc::Slice slice;
  std::string bytes;
  if (buffer.DumpToSingleSlice(&slice).ok()) bytes.assign(reinterpret_cast<const char*>(slice.begin()), slice.size());
  const std::string field = FindInvalidUtf8Field(bytes, message->GetDescriptor());
  if (!field.empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, field + ": not valid UTF-8");
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      "request: not a valid " + message->GetDescriptor()->full_name() + " message");
}

SamplingParams ToSamplingParams(const v1::SamplingParams& p) {
  SamplingParams s;
  if (p.has_temperature()) s.temperature = p.temperature();
  if (p.has_top_p()) s.top_p = p.top_p();
  if (p.has_top_k()) s.top_k = p.top_k();
  if (p.has_min_p()) s.min_p = p.min_p();
  if (p.has_seed()) s.seed = p.seed();
  if (p.has_repetition_penalty()) s.repetition_penalty = p.repetition_penalty();
  if (p.has_presence_penalty()) s.presence_penalty = p.presence_penalty();
  if (p.has_frequency_penalty()) s.frequency_penalty = p.frequency_penalty();
  if (p.has_max_tokens()) s.max_tokens = p.max_tokens();
  s.stop.assign(p.stop().begin(), p.stop().end());
  s.stop_token_ids.assign(p.stop_token_ids().begin(), p.stop_token_ids().end());
  if (p.has_ignore_eos()) s.ignore_eos = p.ignore_eos();
  if (p.has_logprobs()) s.logprobs = p.logprobs();
  for (const auto& kv : p.logit_bias()) s.logit_bias.emplace_back(kv.first, kv.second);
  std::sort(s.logit_bias.begin(), s.logit_bias.end());  // a proto map has no order
  if (p.has_structured_output()) {
    const v1::OutputConstraint& c = p.structured_output();
    switch (c.kind_case()) {
      case v1::OutputConstraint::kJsonSchema: s.constraint = {ConstraintKind::kJsonSchema, c.json_schema()}; break;
      case v1::OutputConstraint::kJsonObject:
        if (c.json_object()) s.constraint = {ConstraintKind::kJsonObject, ""};
        break;
      case v1::OutputConstraint::kRegex: s.constraint = {ConstraintKind::kRegex, c.regex()}; break;
      case v1::OutputConstraint::kGrammar: s.constraint = {ConstraintKind::kGrammar, c.grammar()}; break;
      case v1::OutputConstraint::kStructuralTag:
        s.constraint = {ConstraintKind::kStructuralTag, c.structural_tag()};
        break;
      case v1::OutputConstraint::KIND_NOT_SET: break;
    }
  }
  return s;
}

StatusOr<PruningParams> ToPruningParams(const v1::PruningParams& p, const PruningParams& defaults) {
  PruningParams out = defaults;
  for (const PruningKnob& knob : kPruningKnobs) {
    if (!v1::HasKnob(p, knob)) continue;
    ASL_RETURN_IF_ERROR(std::visit(
        [&](auto member) -> Status {
          using T = KnobValueT<decltype(member)>;
          if constexpr (std::is_same_v<T, int>) {
            out.*member = v1::KnobInt32(p, knob);
          } else if constexpr (std::is_same_v<T, double>) {
            out.*member = v1::KnobDouble(p, knob);
          } else if constexpr (std::is_same_v<T, PolicyKind>) {
            const std::string name = v1::KnobString(p, knob);
            const std::optional<PolicyKind> kind = ParsePolicy(name);
            if (!kind) {
              return InvalidArgument("pruning.policy: unknown policy '" + name + "' (" + PolicyNames(", ") + ")");
            }
            out.*member = *kind;
          } else {
            static_assert(std::is_same_v<T, Pooling>);
            const std::string name = v1::KnobString(p, knob);
            const std::optional<Pooling> pooling = ParsePooling(name);
            if (!pooling) {
              return InvalidArgument("pruning.pooling: must be " + PoolingNames(" or ") + ", got '" + name + "'");
            }
            out.*member = *pooling;
          }
          return Status::Ok();
        },
        knob.member));
  }
  // -1 is the "scale from depth" marker; other negative layer values are mistakes, not markers.
  for (const PruningKnob& knob : kPruningKnobs) {
    if (!IsLayerKnob(knob)) continue;
    const int v = out.*std::get<int PruningParams::*>(knob.member);
    if (v < -1) {
      return InvalidArgument(std::string("pruning.") + knob.name + ": must be >= 0 or -1, got " + std::to_string(v));
    }
  }
  return out;
}

StatusOr<std::vector<TokenId>> EncodeText(const std::string& text, const std::string& field, bool add_bos,
                                          const tok::Tokenizer& tokenizer) {
  if (text.empty()) return InvalidArgument(field + ": must not be empty");
  if (!asl::IsValidUtf8(text)) return InvalidArgument(field + ": not valid UTF-8");
  std::vector<TokenId> ids = tokenizer.Encode(text, add_bos && tokenizer.add_bos(), /*parse_special=*/true);
  if (ids.empty()) return InvalidArgument(field + ": encodes to no tokens");
  return ids;
}

StatusOr<std::vector<TokenId>> EncodeChat(const v1::ChatMessages& chat, const std::string& field,
                                          bool add_generation_prompt, const tok::Tokenizer& tokenizer,
                                          std::string* rendered) {
  if (chat.messages().empty()) return InvalidArgument(field + ".messages: at least one message is required");
  std::vector<tok::ChatMessage> messages;
  messages.reserve(chat.messages_size());
  for (int i = 0; i < chat.messages_size(); ++i) {
    const v1::ChatMessage& m = chat.messages(i);
    const std::string where = field + ".messages[" + std::to_string(i) + "]";
    if (m.role().empty()) return InvalidArgument(where + ".role: must not be empty");
    tok::ChatMessage& out = messages.emplace_back();
    out.role = m.role();
    if (m.has_content()) out.content = m.content();
    out.name = m.name();
    out.tool_call_id = m.tool_call_id();
    for (int k = 0; k < m.tool_calls_size(); ++k) {
      const v1::ToolCall& c = m.tool_calls(k);
      if (c.name().empty()) {
        return InvalidArgument(where + ".tool_calls[" + std::to_string(k) + "].name: must not be empty");
      }
      out.tool_calls.push_back(tok::ToolCall{c.id(), c.name(), c.arguments()});
    }
  }
  tok::ChatRenderOptions options;
  options.add_generation_prompt = add_generation_prompt;
  options.tools_json = chat.tools_json();
  options.extra_context_json = chat.chat_template_kwargs_json();
  StatusOr<tok::RenderedChat> text = tokenizer.ApplyChatTemplate(messages, options);
  if (!text.ok()) {
    // Prefix the request field: "chat.messages: ..." where the message names one, else "chat: ...".
    const std::string& msg = text.status().message();
    const bool names_field = msg.rfind("messages", 0) == 0 || msg.rfind("tools", 0) == 0 ||
                             msg.rfind("chat_template_kwargs", 0) == 0;
    return Status(text.status().code(), field + (names_field ? "." : ": ") + msg);
  }
  if (rendered != nullptr) *rendered = text->text;
  std::vector<TokenId> ids = tokenizer.EncodeChat(*text);
  if (ids.empty()) return InvalidArgument(field + ": renders to no tokens");
  return ids;
}

StatusOr<std::vector<TokenId>> TokenizeInput(const v1::GenerateRequest& r, const tok::Tokenizer& tokenizer,
                                             const RequestLimits& limits) {
  std::vector<TokenId> ids;
  std::string field;
  switch (r.input_case()) {
    case v1::GenerateRequest::kPrompt: {
      field = "prompt";
      ASL_ASSIGN_OR_RETURN(ids, EncodeText(r.prompt(), field, !r.has_add_bos() || r.add_bos(), tokenizer));
      break;
    }
    case v1::GenerateRequest::kChat: {
      field = "chat";
      const bool add_gen = !r.has_add_generation_prompt() || r.add_generation_prompt();
      ASL_ASSIGN_OR_RETURN(ids, EncodeChat(r.chat(), field, add_gen, tokenizer, nullptr));
      break;
    }
    case v1::GenerateRequest::kTokenIds: {
      field = "token_ids.ids";
      if (r.token_ids().ids().empty()) return InvalidArgument(field + ": must not be empty");
      for (int i = 0; i < r.token_ids().ids_size(); ++i) {
        const TokenId t = r.token_ids().ids(i);
        if (t < 0 || t >= limits.vocab_size) {
          return InvalidArgument(field + "[" + std::to_string(i) + "]: token id " + std::to_string(t) +
                                 " outside the vocabulary [0, " + std::to_string(limits.vocab_size) + ")");
        }
      }
      ids.assign(r.token_ids().ids().begin(), r.token_ids().ids().end());
      break;
    }
    case v1::GenerateRequest::INPUT_NOT_SET:
      return InvalidArgument("input: one of prompt, chat or token_ids is required");
  }
  if (static_cast<int64_t>(ids.size()) > limits.max_prompt_tokens) {
    return TooLong(field, ids.size(), limits.max_prompt_tokens);
  }
  return ids;
}

StatusOr<GenerateRequest> ToEngineRequest(const v1::GenerateRequest& r, const std::string& request_id,
                                          const tok::Tokenizer& tokenizer, const RequestLimits& limits) {
  GenerateRequest out;
  out.client_id = request_id;
  // Parameters first: they are cheap to check and a bad one should not cost a tokenization.
  out.sampling = ToSamplingParams(r.sampling());
  ASL_RETURN_IF_ERROR(ValidateSamplingParams(out.sampling, limits.vocab_size));
  ASL_ASSIGN_OR_RETURN(out.pruning, ToPruningParams(r.pruning(), limits.default_pruning));
  ASL_RETURN_IF_ERROR(ResolvePruningParams(&out.pruning, limits.num_layers));
  ASL_ASSIGN_OR_RETURN(out.prompt_ids, TokenizeInput(r, tokenizer, limits));
  out.cache_prompt = !r.has_cache_prompt() || r.cache_prompt();
  if (r.has_prompt_logprobs()) {
    if (r.prompt_logprobs() < 0 || r.prompt_logprobs() > 20) {
      return InvalidArgument("prompt_logprobs: must be in [0, 20], got " + std::to_string(r.prompt_logprobs()));
    }
    out.prompt_logprobs = r.prompt_logprobs();
  }
  return out;
}

void AppendChunk(const TokenChunk& chunk, v1::GenerateChunk* out) {
  for (TokenId t : chunk.token_ids) out->add_token_ids(t);
  out->mutable_text()->append(chunk.text);
  auto fill = [](const TokenLogprob& lp, v1::TokenLogprob* p) {
    p->set_token_id(lp.token_id);
    p->set_logprob(lp.logprob);
    p->set_text(lp.text);
    p->set_token_bytes(lp.bytes);
  };
  for (const TokenLogprob& lp : chunk.sampled_logprobs) fill(lp, out->add_logprobs());
  for (const auto& top : chunk.top_logprobs) {
    v1::TopLogprobs* t = out->add_top_logprobs();
    for (const TokenLogprob& lp : top) fill(lp, t->add_candidates());
  }
  for (const TokenLogprob& lp : chunk.prompt_logprobs) fill(lp, out->add_prompt_logprobs());
  for (const auto& top : chunk.prompt_top_logprobs) {
    v1::TopLogprobs* t = out->add_prompt_top_logprobs();
    for (const TokenLogprob& lp : top) fill(lp, t->add_candidates());
  }
}

void FillComplete(const FinishEvent& ev, bool detailed, v1::GenerateComplete* out) {
  out->set_finish_reason(ToProto(ev.reason));
  out->set_stop_string(ev.stop_string);
  out->set_num_preemptions(ev.num_preemptions);
  v1::Usage* u = out->mutable_usage();
  u->set_prompt_tokens(ev.usage.prompt_tokens);
  u->set_completion_tokens(ev.usage.completion_tokens);
  u->set_kv_tokens_kept(ev.usage.kv_tokens_kept);
  u->set_kv_tokens_full(ev.pruning.num_kv_tokens_full);
  u->set_cached_tokens(ev.usage.cached_tokens);
  v1::Timings* t = out->mutable_timings();
  t->set_queue_seconds(ev.timings.queue_seconds);
  t->set_ttft_seconds(ev.timings.ttft_seconds);
  t->set_e2e_seconds(ev.timings.e2e_seconds);
  t->set_mean_tpot_seconds(ev.timings.mean_tpot_seconds);
  t->set_prefill_seconds(ev.pruning.prefill_seconds);
  const PruningReport& r = ev.pruning;
  v1::PruningReport* p = out->mutable_pruning();
  p->set_policy(PolicyName(r.policy));
  p->set_outcome(ToProto(r.outcome));
  p->set_selection_layer(r.selection_layer);
  p->set_num_prompt_tokens(r.num_prompt_tokens);
  p->set_num_propagated_tokens(r.num_propagated_tokens);
  p->set_num_kv_tokens_kept(r.num_kv_tokens_kept);
  p->set_num_kv_tokens_full(r.num_kv_tokens_full);
  p->set_kv_bytes(r.kv_bytes);
  p->set_prefill_seconds(r.prefill_seconds);
  p->set_prefill_token_layers(r.prefill_token_layers);
  p->set_num_prefill_slices(r.num_prefill_slices);
  if (detailed) {
    for (double v : r.variance_ratios) p->add_variance_ratios(v);
    for (int64_t pos : r.selected_positions) p->add_selected_positions(pos);
  }
}

void FillPruningParams(const PruningParams& params, v1::PruningParams* out) {
  for (const PruningKnob& knob : kPruningKnobs) {
    std::visit(
        [&](auto member) {
          using T = KnobValueT<decltype(member)>;
          if constexpr (std::is_same_v<T, PolicyKind>) {
            v1::SetKnob(knob, std::string(PolicyName(params.*member)), out);
          } else if constexpr (std::is_same_v<T, Pooling>) {
            v1::SetKnob(knob, std::string(PoolingName(params.*member)), out);
          } else {
            v1::SetKnob(knob, params.*member, out);  // int32 or double
          }
        },
        knob.member);
  }
}

std::string ServedModelName(const std::string& model_path) {
  std::string path = model_path;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  std::string stem = path.substr(path.rfind('/') == std::string::npos ? 0 : path.rfind('/') + 1);
  for (const std::string ext : {".gguf", ".safetensors", ".bin"}) {
    if (stem.size() > ext.size() && stem.compare(stem.size() - ext.size(), ext.size(), ext) == 0) {
      stem.resize(stem.size() - ext.size());
      break;
    }
  }
  for (char& c : stem) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) c = '-';
  }
  return stem.empty() || stem == "/" ? "model" : stem;
}

void FillModelInfo(const Engine& engine, int64_t max_prompt_tokens, v1::ModelInfo* out) {
  const ModelInfo& m = engine.model_info();
  out->set_name(m.name);
  out->set_served_name(ServedModelName(m.path));
  if (const auto& tmpl = engine.tokenizer().chat_template()) out->set_chat_template(tmpl->source());
  out->set_arch(m.arch);
  out->set_path(m.path);
  out->set_device(m.device);
  out->set_dtype(m.dtype);
  out->set_num_layers(m.num_layers);
  out->set_num_heads(m.num_heads);
  out->set_num_kv_heads(m.num_kv_heads);
  out->set_head_dim(m.head_dim);
  out->set_hidden_size(m.hidden_size);
  out->set_vocab_size(m.vocab_size);
  out->set_context_length(m.context_length);
  out->set_max_prompt_tokens(LimitsFor(engine, max_prompt_tokens).max_prompt_tokens);
  out->set_kv_blocks_total(m.kv_blocks_total);
  out->set_kv_block_size(m.kv_block_size);
  out->set_kv_bytes_total(m.kv_bytes_total);
  out->set_kv_dtype(m.kv_dtype);
  out->set_decode_activations(m.decode_activations);
  for (TokenId t : m.eos_token_ids) out->add_eos_token_ids(t);
  for (const PolicyInfo& p : kPolicies) out->add_policies(p.name);
  PruningParams defaults = engine.config().default_pruning;
  (void)ResolvePruningParams(&defaults, static_cast<int>(m.num_layers));  // validated at startup
  FillPruningParams(defaults, out->mutable_default_pruning());
}

}  // namespace asl::server
