// Structured output (engine/sample/grammar.h) on toy vocabularies: the masks are exactly the
// grammar's next tokens, sampled outputs match their constraint whatever the logits, end tokens
// are allowed only where the grammar is complete, and bad specs fail with InvalidArgument.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <set>
#include <thread>

#include "engine/sample/grammar.h"
#include "engine/sample/sampler.h"

namespace asl::sample {
namespace {

constexpr TokenId kEos = 0;

// Token 0 is the end token (a control token: no bytes); then single characters and a few pairs.
std::vector<std::string> ToyVocab() {
  std::vector<std::string> v = {""};
  for (char c = ' '; c <= '~'; ++c) v.emplace_back(1, c);
  for (const char* pair : {"ab", "\":", "{\"", "12", "true", "\n"}) v.emplace_back(pair);
  return v;
}

TokenId Id(const std::vector<std::string>& vocab, const std::string& text) {
  for (size_t i = 1; i < vocab.size(); ++i) {
    if (vocab[i] == text) return static_cast<TokenId>(i);
  }
  ADD_FAILURE() << "no token " << text;
  return -1;
}

std::shared_ptr<const CompiledConstraint> MustCompile(GrammarCompiler& c, ConstraintKind kind, const std::string& spec) {
  StatusOr<std::shared_ptr<const CompiledConstraint>> g = c.Compile(OutputConstraint{kind, spec});
  EXPECT_TRUE(g.ok()) << g.status().message();
  return g.ok() ? *g : nullptr;
}

// The tokens the mask leaves finite.
std::set<std::string> Allowed(GrammarState& s, const std::vector<std::string>& vocab, int64_t width) {
  std::vector<float> logits(static_cast<size_t>(width), 0.f);
  s.Mask(logits.data(), width);
  std::set<std::string> out;
  for (int64_t i = 0; i < width; ++i) {
    if (std::isfinite(logits[i])) out.insert(i < static_cast<int64_t>(vocab.size()) ? (i == kEos ? "<eos>" : vocab[i]) : "?");
  }
  return out;
}

TEST(Grammar, MaskIsExactlyTheGrammarsNextTokens) {
  const std::vector<std::string> vocab = ToyVocab();
  const int64_t width = static_cast<int64_t>(vocab.size()) + 5;  // logits wider than the vocabulary
  GrammarCompiler compiler(vocab, width, {kEos}, 1, 1 << 20);
  GrammarState s(MustCompile(compiler, ConstraintKind::kRegex, "a+b"), {kEos});
  EXPECT_EQ(Allowed(s, vocab, width), (std::set<std::string>{"a", "ab"}));
  ASSERT_TRUE(s.Accept(Id(vocab, "a")));
  EXPECT_EQ(Allowed(s, vocab, width), (std::set<std::string>{"a", "ab", "b"}));
  EXPECT_FALSE(s.Accept(Id(vocab, "c")));  // rejected, state unchanged
  EXPECT_FALSE(s.Accept(kEos));             // incomplete: no end yet
  ASSERT_TRUE(s.Accept(Id(vocab, "b")));
  EXPECT_EQ(Allowed(s, vocab, width), (std::set<std::string>{"<eos>"}));
  EXPECT_FALSE(s.terminated());
  ASSERT_TRUE(s.Accept(kEos));
  EXPECT_TRUE(s.terminated());
}

TEST(Grammar, RequestStopTokensEndTheOutputToo) {
  const std::vector<std::string> vocab = ToyVocab();
  const int64_t width = static_cast<int64_t>(vocab.size());
  GrammarCompiler compiler(vocab, width, {kEos}, 1, 1 << 20);
  const TokenId nl = Id(vocab, "\n");  // a request's stop_token_ids entry
  GrammarState s(MustCompile(compiler, ConstraintKind::kGrammar, R"(root ::= "yes" | "no")"), {kEos, nl});
  for (char c : std::string("no")) ASSERT_TRUE(s.Accept(Id(vocab, std::string(1, c))));
  EXPECT_EQ(Allowed(s, vocab, width), (std::set<std::string>{"<eos>", "\n"}));
  ASSERT_TRUE(s.Accept(nl));
  EXPECT_TRUE(s.terminated());
}

// Sampled with random logits (greedy and seeded temperature sampling) until the grammar ends:
// the text satisfies the constraint every time.
std::string Generate(GrammarCompiler& compiler, const std::vector<std::string>& vocab, ConstraintKind kind,
                     const std::string& spec, uint64_t seed, double temperature) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = seed;
  SamplerState state(p, {}, std::make_unique<GrammarState>(MustCompile(compiler, kind, spec), std::vector<TokenId>{kEos}));
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> noise(0.f, 3.f);
  std::string text;
  // Closers are favoured so that recursive grammars end (the mask, not the logits, decides what is
  // valid: they only steer).
  std::vector<TokenId> closers = {kEos};
  for (size_t i = 1; i < vocab.size(); ++i) {
    if (vocab[i] == "\"" || vocab[i] == "}" || vocab[i] == "]" || vocab[i] == ")") closers.push_back(static_cast<TokenId>(i));
  }
  for (int step = 0; step < 2000 && !state.grammar_terminated(); ++step) {
    at::Tensor logits = at::empty({1, static_cast<int64_t>(vocab.size())}, at::kFloat);
    float* x = logits.data_ptr<float>();
    for (int64_t i = 0; i < logits.size(1); ++i) x[i] = noise(rng);
    for (TokenId c : closers) x[c] += 6.f;
    std::vector<SamplerState*> states = {&state};
    const TokenId t = Sample(logits, states)[0].token_id;
    EXPECT_TRUE(state.Observe(t)) << "token " << t << " after " << text;
    if (t != kEos) text += vocab[t];
  }
  EXPECT_TRUE(state.grammar_terminated()) << text;
  return text;
}

TEST(Grammar, SampledOutputsSatisfyTheirConstraint) {
  const std::vector<std::string> vocab = ToyVocab();
  GrammarCompiler compiler(vocab, static_cast<int64_t>(vocab.size()), {kEos}, 2, 8 << 20);
  const std::string schema = R"({"type": "object", "properties": {
      "n": {"type": "integer", "minimum": 0, "maximum": 99},
      "ok": {"type": "boolean"},
      "tag": {"type": "string", "enum": ["ab", "cd"]}},
    "required": ["n", "ok", "tag"]})";
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    const double t = seed % 2 ? 0.0 : 1.0;
    const std::string regex_out = Generate(compiler, vocab, ConstraintKind::kRegex, "[0-9]{3}-[a-c]+", seed, t);
    EXPECT_TRUE(std::regex_match(regex_out, std::regex("[0-9]{3}-[a-c]+"))) << regex_out;

    const std::string json_out = Generate(compiler, vocab, ConstraintKind::kJsonSchema, schema, seed, t);
    const nlohmann::json j = nlohmann::json::parse(json_out, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(j.is_discarded()) << json_out;
    ASSERT_TRUE(j.is_object()) << json_out;
    EXPECT_EQ(j.size(), 3u) << json_out;  // strict: no keys the schema does not declare
    ASSERT_TRUE(j["n"].is_number_integer()) << json_out;
    EXPECT_GE(j["n"].get<int>(), 0);
    EXPECT_LE(j["n"].get<int>(), 99);
    EXPECT_TRUE(j["ok"].is_boolean()) << json_out;
    EXPECT_TRUE(j["tag"] == "ab" || j["tag"] == "cd") << json_out;
    // No free whitespace: json.dumps's separators ", " and ": " only (keys in the schema's order,
    // which here is also nlohmann's sorted order).
    std::string squeezed = json_out;
    for (const std::string sep : {", ", ": "}) {
      for (size_t p = squeezed.find(sep); p != std::string::npos; p = squeezed.find(sep, p)) squeezed.erase(p + 1, 1);
    }
    EXPECT_EQ(squeezed, j.dump()) << json_out;

    const std::string any_object = Generate(compiler, vocab, ConstraintKind::kJsonObject, "", seed, t);
    try {
      EXPECT_TRUE(nlohmann::json::parse(any_object).is_object()) << any_object;
    } catch (const nlohmann::json::out_of_range& e) {
      EXPECT_EQ(e.id, 406) << any_object;  // valid JSON with a number past double's range (1e999)
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what() << ": " << any_object;
    }

    const std::string ebnf = Generate(compiler, vocab, ConstraintKind::kGrammar,
                                      "root ::= item (\",\" item)*\nitem ::= [a-z] | \"(\" root \")\"", seed, t);
    EXPECT_TRUE(std::regex_match(ebnf, std::regex(R"([a-z(),]+)"))) << ebnf;
  }
}

TEST(Grammar, BadSpecsAreInvalidArgumentNamingTheConstraint) {
  const std::vector<std::string> vocab = ToyVocab();
  GrammarCompiler compiler(vocab, static_cast<int64_t>(vocab.size()), {kEos}, 1, 1 << 20);
  const std::pair<ConstraintKind, std::string> bad[] = {
      {ConstraintKind::kJsonSchema, "{not json"},
      {ConstraintKind::kJsonSchema, R"({"type": "integer", "minimum": 5, "maximum": 1})"},
      {ConstraintKind::kRegex, "(ab"},
      {ConstraintKind::kGrammar, "root ::= undefined_rule"},
      {ConstraintKind::kGrammar, "no rules here"},
      {ConstraintKind::kStructuralTag, R"({"type": "nonsense"})"},
  };
  for (const auto& [kind, spec] : bad) {
    StatusOr<std::shared_ptr<const CompiledConstraint>> g = compiler.Compile(OutputConstraint{kind, spec});
    ASSERT_FALSE(g.ok()) << spec;
    EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument) << spec;
    EXPECT_EQ(g.status().message().rfind("sampling.constraint: invalid ", 0), 0u) << g.status().message();
  }
  StatusOr<std::shared_ptr<const CompiledConstraint>> none = compiler.Compile(OutputConstraint{});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, nullptr);
}

TEST(Grammar, ManyThreadsMayCompileAtOnce) {
  const std::vector<std::string> vocab = ToyVocab();
  GrammarCompiler compiler(vocab, static_cast<int64_t>(vocab.size()), {kEos}, 1, 8 << 20);
  std::vector<std::thread> threads;
  std::vector<Status> results(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      const std::string spec = R"({"type": "array", "items": {"type": "integer"}, "maxItems": )" + std::to_string(t % 3 + 1) + "}";
      results[t] = compiler.Compile(OutputConstraint{ConstraintKind::kJsonSchema, spec}).status();
    });
  }
  for (auto& th : threads) th.join();
  for (const Status& s : results) EXPECT_TRUE(s.ok()) << s.message();
}

}  // namespace
}  // namespace asl::sample
