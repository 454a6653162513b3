// ValidateSamplingParams: each constraint rejects with a message that names the field, and the
// boundary values are accepted.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "engine/request.h"

namespace asl {
namespace {

constexpr int64_t kVocab = 1000;

void ExpectRejected(const std::function<void(SamplingParams&)>& edit, const std::string& message) {
  SamplingParams p;
  edit(p);
  Status st = ValidateSamplingParams(p, kVocab);
  ASSERT_FALSE(st.ok()) << "expected: " << message;
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), message);
}

void ExpectAccepted(const std::function<void(SamplingParams&)>& edit) {
  SamplingParams p;
  edit(p);
  Status st = ValidateSamplingParams(p, kVocab);
  EXPECT_TRUE(st.ok()) << st.message();
}

TEST(ValidateSamplingParams, DefaultsAreValid) { ExpectAccepted([](SamplingParams&) {}); }

TEST(ValidateSamplingParams, EachFieldIsNamed) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  ExpectRejected([](auto& p) { p.temperature = -0.5; }, "sampling.temperature: must be finite and >= 0, got -0.5");
  ExpectRejected([&](auto& p) { p.temperature = inf; }, "sampling.temperature: must be finite and >= 0, got inf");
  ExpectRejected([&](auto& p) { p.temperature = nan; }, "sampling.temperature: must be finite and >= 0, got nan");
  ExpectRejected([](auto& p) { p.top_p = 1.5; }, "sampling.top_p: must be in (0, 1], got 1.5");
  ExpectRejected([](auto& p) { p.top_p = 0.0; }, "sampling.top_p: must be in (0, 1], got 0");
  ExpectRejected([&](auto& p) { p.top_p = nan; }, "sampling.top_p: must be in (0, 1], got nan");
  ExpectRejected([](auto& p) { p.top_k = -1; }, "sampling.top_k: must be >= 0 (0 = off), got -1");
  ExpectRejected([](auto& p) { p.min_p = 1.01; }, "sampling.min_p: must be in [0, 1], got 1.01");
  ExpectRejected([](auto& p) { p.min_p = -0.1; }, "sampling.min_p: must be in [0, 1], got -0.1");
  ExpectRejected([](auto& p) { p.repetition_penalty = 0.0; },
                 "sampling.repetition_penalty: must be finite and > 0 (1 = off), got 0");
  ExpectRejected([](auto& p) { p.presence_penalty = 2.5; }, "sampling.presence_penalty: must be in [-2, 2], got 2.5");
  ExpectRejected([](auto& p) { p.frequency_penalty = -3; }, "sampling.frequency_penalty: must be in [-2, 2], got -3");
  ExpectRejected([](auto& p) { p.logit_bias = {{5, 1.f}, {1000, 1.f}}; },
                 "sampling.logit_bias[1000]: token id 1000 outside the vocabulary [0, 1000)");
  ExpectRejected([](auto& p) { p.logit_bias = {{5, 100.5f}}; },
                 "sampling.logit_bias[5]: the bias of token 5 must be in [-100, 100], got 100.5");
  ExpectRejected([](auto& p) { p.logit_bias = {{5, 1.f}, {5, 2.f}}; },
                 "sampling.logit_bias[5]: token id 5 given twice");
  ExpectRejected([](auto& p) { p.max_tokens = -1; }, "sampling.max_tokens: must be >= 1, or 0 for the rest of the context, got -1");
  ExpectRejected([](auto& p) { p.stop_token_ids = {5, 1000}; },
                 "sampling.stop_token_ids[1]: token id 1000 outside the vocabulary [0, 1000)");
  ExpectRejected([](auto& p) { p.stop_token_ids = {-1}; },
                 "sampling.stop_token_ids[0]: token id -1 outside the vocabulary [0, 1000)");
  ExpectRejected([](auto& p) { p.logprobs = 21; }, "sampling.logprobs: must be in [0, 20], got 21");
  ExpectRejected([](auto& p) { p.logprobs = -1; }, "sampling.logprobs: must be in [0, 20], got -1");
  ExpectRejected([](auto& p) { p.stop = std::vector<std::string>(17, "x"); },
                 "sampling.stop: at most 16 stop strings, got 17");
  ExpectRejected([](auto& p) { p.stop = {"ok", ""}; }, "sampling.stop[1]: must not be empty");
  ExpectRejected([](auto& p) { p.stop = {std::string(257, 'a')}; },
                 "sampling.stop[0]: must be at most 256 bytes, got 257");
  ExpectRejected([](auto& p) { p.stop = {"ok", "\xE7\xB5"}; }, "sampling.stop[1]: must be valid UTF-8");
  ExpectRejected([](auto& p) { p.constraint = {ConstraintKind::kRegex, ""}; },
                 "sampling.constraint: a regex constraint needs a non-empty spec");
  ExpectRejected([](auto& p) { p.constraint = {ConstraintKind::kJsonSchema, std::string((1 << 20) + 1, ' ')}; },
                 "sampling.constraint: the spec must be at most 1048576 bytes, got 1048577");
  ExpectRejected([](auto& p) { p.constraint = {ConstraintKind::kGrammar, "root ::= \"\xE7\xB5\""}; },
                 "sampling.constraint: the spec must be valid UTF-8");
  ExpectAccepted([](auto& p) { p.constraint = {ConstraintKind::kJsonObject, ""}; });
}

TEST(ValidateSamplingParams, BoundariesAreAccepted) {
  ExpectAccepted([](auto& p) {
    p.temperature = 0.0;
    p.top_p = 1.0;
    p.top_k = 0;
    p.min_p = 1.0;
    p.presence_penalty = -2.0;
    p.frequency_penalty = 2.0;
    p.max_tokens = 1;
    p.stop_token_ids = {0, 999};
    p.logprobs = 20;
    p.stop = std::vector<std::string>(16, std::string(256, 'a'));
  });
  ExpectAccepted([](auto& p) {
    p.temperature = 100.0;
    p.top_p = 1e-9;
    p.min_p = 0.0;
    p.repetition_penalty = 1e-3;
    p.stop = {"終わり", "🙂"};
    p.max_tokens = 0;  // the rest of the context (resolved by Submit)
    p.logit_bias = {{0, -100.f}, {999, 100.f}};
  });
}

}  // namespace
}  // namespace asl
