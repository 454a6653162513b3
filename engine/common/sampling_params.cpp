// ValidateSamplingParams (declared in engine/request.h): every constraint on a request's sampling
// and stopping fields. Messages name the field ("sampling.top_p: must be in (0, 1], got 1.5") so
// the server can map them to INVALID_ARGUMENT unchanged. Conditions are written as "accept when"
// and negated, so NaN fails every range check.
#include <cmath>
#include <cstdio>
#include <string>

#include "engine/common/utf8.h"
#include "engine/request.h"

namespace asl {
namespace {

constexpr int kMaxLogprobs = 20;          // OpenAI's top_logprobs limit
constexpr size_t kMaxStopStrings = 16;
constexpr size_t kMaxStopStringBytes = 256;
constexpr size_t kMaxConstraintBytes = 1 << 20;  // a JSON schema or grammar: 1 MiB

std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

Status Bad(const std::string& field, const std::string& why) {
  return InvalidArgument("sampling." + field + ": " + why);
}


}  // namespace

Status ValidateSamplingParams(const SamplingParams& p, int64_t vocab_size) {
  if (!(std::isfinite(p.temperature) && p.temperature >= 0.0)) {
    return Bad("temperature", "must be finite and >= 0, got " + Num(p.temperature));
  }
  if (!(p.top_p > 0.0 && p.top_p <= 1.0)) return Bad("top_p", "must be in (0, 1], got " + Num(p.top_p));
  if (!(p.top_k >= 0)) return Bad("top_k", "must be >= 0 (0 = off), got " + std::to_string(p.top_k));
  if (!(p.min_p >= 0.0 && p.min_p <= 1.0)) return Bad("min_p", "must be in [0, 1], got " + Num(p.min_p));
  if (!(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0.0)) {
    return Bad("repetition_penalty", "must be finite and > 0 (1 = off), got " + Num(p.repetition_penalty));
  }
  if (!(p.presence_penalty >= -2.0 && p.presence_penalty <= 2.0)) {
    return Bad("presence_penalty", "must be in [-2, 2], got " + Num(p.presence_penalty));
  }
  if (!(p.frequency_penalty >= -2.0 && p.frequency_penalty <= 2.0)) {
    return Bad("frequency_penalty", "must be in [-2, 2], got " + Num(p.frequency_penalty));
  }
  if (!(p.max_tokens >= 0)) {
    return Bad("max_tokens", "must be >= 1, or 0 for the rest of the context, got " + std::to_string(p.max_tokens));
  }
  for (size_t i = 0; i < p.stop_token_ids.size(); ++i) {
    const TokenId t = p.stop_token_ids[i];
    if (t < 0 || t >= vocab_size) {
      return Bad("stop_token_ids[" + std::to_string(i) + "]",
                 "token id " + std::to_string(t) + " outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
    }
  }
  for (size_t i = 0; i < p.logit_bias.size(); ++i) {
    const auto [t, bias] = p.logit_bias[i];
    const std::string field = "logit_bias[" + std::to_string(t) + "]";
    if (t < 0 || t >= vocab_size) {
      return Bad(field, "token id " + std::to_string(t) + " outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
    }
    if (!(bias >= -100.f && bias <= 100.f)) {
      return Bad(field, "the bias of token " + std::to_string(t) + " must be in [-100, 100], got " + Num(bias));
    }
    for (size_t j = 0; j < i; ++j) {
      if (p.logit_bias[j].first == t) return Bad(field, "token id " + std::to_string(t) + " given twice");
    }
  }
  if (!(p.logprobs >= 0 && p.logprobs <= kMaxLogprobs)) {
    return Bad("logprobs", "must be in [0, " + std::to_string(kMaxLogprobs) + "], got " + std::to_string(p.logprobs));
  }
  if (p.stop.size() > kMaxStopStrings) {
    return Bad("stop", "at most " + std::to_string(kMaxStopStrings) + " stop strings, got " + std::to_string(p.stop.size()));
  }
  for (size_t i = 0; i < p.stop.size(); ++i) {
    const std::string field = "stop[" + std::to_string(i) + "]";
    if (p.stop[i].empty()) return Bad(field, "must not be empty");
    if (p.stop[i].size() > kMaxStopStringBytes) {
      return Bad(field, "must be at most " + std::to_string(kMaxStopStringBytes) + " bytes, got " +
                            std::to_string(p.stop[i].size()));
    }
    // The StopMatcher emits the text before a match; a valid UTF-8 stop string starts on a
    // character boundary, so that text never ends inside a character.
    if (!IsValidUtf8(p.stop[i])) return Bad(field, "must be valid UTF-8");
  }
  const OutputConstraint& c = p.constraint;
  const bool needs_spec = c.kind != ConstraintKind::kNone && c.kind != ConstraintKind::kJsonObject;
  if (needs_spec && c.spec.empty()) {
    return Bad("constraint", std::string("a ") + ConstraintKindName(c.kind) + " constraint needs a non-empty spec");
  }
  if (c.spec.size() > kMaxConstraintBytes) {
    return Bad("constraint", "the spec must be at most " + std::to_string(kMaxConstraintBytes) + " bytes, got " +
                                 std::to_string(c.spec.size()));
  }
  if (!IsValidUtf8(c.spec)) return Bad("constraint", "the spec must be valid UTF-8");
  return Status::Ok();
}

const char* ConstraintKindName(ConstraintKind kind) {
  switch (kind) {
    case ConstraintKind::kNone: return "none";
    case ConstraintKind::kJsonObject: return "json_object";
    case ConstraintKind::kJsonSchema: return "json_schema";
    case ConstraintKind::kRegex: return "regex";
    case ConstraintKind::kGrammar: return "grammar";
    case ConstraintKind::kStructuralTag: return "structural_tag";
  }
  return "?";
}

}  // namespace asl
